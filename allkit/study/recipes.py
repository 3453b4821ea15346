"""Training recipes: the paper's, and an improved one selected on validation cells only.

A recipe is *how* the CNN is fine-tuned and how it predicts; the profile says *on what* (data, split,
image size, epochs, backbone). ``allkit reproduce --recipe improved`` and the book's notebook on the
improved recipe use the same definitions, so the CLI runs what the book measured.

- ``paper``: Adamax at a constant 1e-3, batch 40, the paper's augmentation (flips with p = 0.2, rotation
  up to 10 degrees), plain cross-entropy, the last epoch's weights, one forward pass per cell, argmax.
  Normalisation follows the profile (the ``sample`` and ``ci`` profiles normalise; ``paper`` does not, as
  the authors' code).
- ``improved``: what measurably helped on the validation subjects of the real fold-1 sample (notebook
  ``11_improved_recipe`` shows the selection and the test result): normalised input, a cosine learning-rate
  schedule with half an epoch of warm-up, rotation by any angle (a blood cell on a slide has no "up"),
  label smoothing 0.1, the weights of the epoch with the lowest validation loss, and test-time
  augmentation over the eight exact flips and quarter turns (no interpolation: the cell is unchanged,
  only its orientation), and a decision threshold on p(ALL) chosen on the validation cells (best balanced
  accuracy, :func:`allkit.study.calibration.choose_threshold`) instead of 0.5. Notebook 11 shows which of these
  the test-set gain comes from: on the fold-1 sample, almost all of it is the threshold.
"""

from dataclasses import asdict, dataclass, replace

from allkit.constants import FLIP_PROBABILITY, LEARNING_RATE, ROTATION_DEGREES
from allkit.errors import ConfigError
from allkit.transforms import BatchAugment

THRESHOLDS = ("argmax", "validation")


@dataclass(frozen=True)
class Recipe:
    name: str
    normalize: bool | None = None  # None: the profile's
    optimizer: str = "adamax"
    lr: float = LEARNING_RATE
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    flip_probability: float = FLIP_PROBABILITY
    rotation_degrees: float = ROTATION_DEGREES
    label_smoothing: float = 0.0
    class_weight: str | None = None
    keep_best: bool = False
    tta: bool = False  # average the softmax (and XGBoost's probability) over the 8 dihedral views
    threshold: str = "argmax"  # or "validation": the cut on p(ALL) with the best validation balanced accuracy

    def to_dict(self) -> dict:
        return asdict(self)

    def training_dict(self) -> dict:
        """What the fine-tune and its stored outputs depend on (the decision threshold is applied later)."""
        out = self.to_dict()
        out.pop("threshold")
        return out

    def trainer_kwargs(self) -> dict:
        """Keyword arguments of :class:`allkit.train.Trainer` this recipe sets (not normalisation)."""
        paper_augment = self.flip_probability == FLIP_PROBABILITY and self.rotation_degrees == ROTATION_DEGREES
        augment = (
            True
            if paper_augment
            else BatchAugment(
                p_hflip=self.flip_probability, p_vflip=self.flip_probability, degrees=self.rotation_degrees
            )
        )
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "lr_schedule": self.lr_schedule,
            "warmup_epochs": self.warmup_epochs,
            "label_smoothing": self.label_smoothing,
            "class_weight": self.class_weight,
            "keep_best": self.keep_best,
            "augment": augment,
        }

    def __post_init__(self):
        if self.threshold not in THRESHOLDS:
            raise ConfigError(f"recipe {self.name!r}: threshold={self.threshold!r}; expected one of {THRESHOLDS}")

    def with_overrides(self, **overrides) -> "Recipe":
        return replace(self, **overrides)


RECIPES = {
    "paper": Recipe(name="paper"),
    "improved": Recipe(
        name="improved",
        normalize=True,
        lr_schedule="cosine",
        warmup_epochs=0.5,
        flip_probability=0.5,
        rotation_degrees=180.0,
        label_smoothing=0.1,
        keep_best=True,
        tta=True,
        threshold="validation",
    ),
}


def get_recipe(recipe: str | Recipe | None = None) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    name = recipe or "paper"
    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r} is unknown; expected one of {', '.join(RECIPES)}")
    return RECIPES[name]

"""Training recipes: the paper's, an improved one and a robust one, each selected on validation cells only.

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
  accuracy, :func:`allkit.study.calibration.choose_threshold`) instead of 0.5. It was fixed before the
  external people were scored; on them it does worse than the paper's recipe, and notebook 11's ablation
  shows that most of the loss is the validation threshold, fitted on the one healthy donor of the
  ``sample`` profile's validation part. Like ``robust``, it is kept as a worked example of a fair
  comparison, not as a recommendation.
- ``robust``: the paper's recipe with the single changes of :data:`ACROSS` that beat it on the fold-1
  validation donors (notebook ``12_across_people``), combined; chosen before the external people were scored.
  On those people it does worse than the paper's recipe (notebook 12 gives the numbers): it is kept as the
  outcome of a rule fixed in advance, not as a recommendation.
"""

from dataclasses import asdict, dataclass, replace

from allkit.constants import FLIP_PROBABILITY, LEARNING_RATE, ROTATION_DEGREES
from allkit.errors import ConfigError

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
    # What may carry over to other people (allkit.study.across):
    hed_jitter: float = 0.0  # HED stain jitter, sigma of Tellez et al.'s perturbation
    color_jitter: float = 0.0  # brightness, contrast and saturation factors in [1 - c, 1 + c]
    grayscale: float = 0.0  # probability of a grayscale cell
    balanced_sampling: bool = False  # healthy cells repeated until both classes are as frequent
    freeze: float = 0.0  # fraction of the parameter tensors (stem first) left at their ImageNet values
    epochs: int | None = None  # None: the profile's

    def to_dict(self) -> dict:
        return asdict(self)

    def training_dict(self) -> dict:
        """What the fine-tune and its stored outputs depend on (the decision threshold is applied later).
        Fields added after the first study are left out at their defaults, so earlier experiments keep their key."""
        later = {
            f: getattr(Recipe, f)
            for f in ("hed_jitter", "color_jitter", "grayscale", "balanced_sampling", "freeze", "epochs")
        }
        out = {k: v for k, v in self.to_dict().items() if k != "threshold" and (k not in later or v != later[k])}
        return out

    def trainer_kwargs(self) -> dict:
        """Keyword arguments of :class:`allkit.train.Trainer` this recipe sets (not normalisation)."""
        from allkit.study.across import StainAugment  # torch and scikit-image: only when a run is built
        from allkit.transforms import BatchAugment

        paper_augment = self.flip_probability == FLIP_PROBABILITY and self.rotation_degrees == ROTATION_DEGREES
        augment = (
            True
            if paper_augment
            else BatchAugment(
                p_hflip=self.flip_probability, p_vflip=self.flip_probability, degrees=self.rotation_degrees
            )
        )
        if self.hed_jitter or self.color_jitter or self.grayscale:
            geometric = BatchAugment() if augment is True else augment
            augment = StainAugment(geometric, hed=self.hed_jitter, color=self.color_jitter, grayscale=self.grayscale)
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


PAPER = RECIPES["paper"]
# One change at a time from the paper's recipe: what the chapter "Across people" measures (allkit.study.across).
ACROSS = {
    recipe.name: recipe
    for recipe in (
        PAPER.with_overrides(name="across-color", color_jitter=0.3),
        PAPER.with_overrides(name="across-stain", hed_jitter=0.05),
        PAPER.with_overrides(name="across-grayscale", grayscale=0.5),
        PAPER.with_overrides(name="across-geometry", flip_probability=0.5, rotation_degrees=180.0),
        PAPER.with_overrides(name="across-lower-lr", lr=1e-4),
        PAPER.with_overrides(name="across-frozen", freeze=0.6),
        PAPER.with_overrides(name="across-early-stop", keep_best=True),
        PAPER.with_overrides(name="across-balanced", balanced_sampling=True),
    )
}


def combine(changes, name: str = "robust") -> Recipe:
    """The paper's recipe with every one of ``changes`` (names in :data:`ACROSS`) applied together."""
    paper = PAPER.to_dict()
    fields = {}
    for change in changes:
        if change not in ACROSS:
            raise ConfigError(f"{change!r} is not one of the single changes: {', '.join(ACROSS)}")
        fields.update({k: v for k, v in ACROSS[change].to_dict().items() if k != "name" and v != paper[k]})
    return PAPER.with_overrides(name=name, **fields)


# ROBUST_CHANGES: the single changes that beat the paper's recipe on the fold-1 validation donors (balanced
# accuracy of the hybrid; sample profile, seed 42), the rule fixed in notebook 12 before the external people
# were scored. The notebook recomputes the choice from its own runs and says whether it still agrees.
ROBUST_CHANGES = (
    "across-color",
    "across-stain",
    "across-grayscale",
    "across-geometry",
    "across-lower-lr",
    "across-frozen",
    "across-early-stop",
)
RECIPES["robust"] = combine(ROBUST_CHANGES)


def get_recipe(recipe: str | Recipe | None = None) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    name = recipe or "paper"
    if name not in RECIPES and name not in ACROSS:
        raise ConfigError(f"recipe {name!r} is unknown; expected one of {', '.join(RECIPES)}")
    return RECIPES.get(name) or ACROSS[name]

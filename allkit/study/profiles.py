"""Run profiles: the same method at three sizes.

- ``paper``: the exact protocol on the full C-NMC 2019 download (train on ``training_data``, the
  preliminary test set halved into validation and test by subject), EfficientNet-B0 with torchvision's
  ImageNet weights, 224 px, 5 epochs of Adamax at 1e-3, batch 40, no ImageNet normalisation (the
  paper's pipeline ends at ``ToTensor``). What a Colab GPU user runs.
- ``sample``: a full run on what is present that CPUs finish, with the release's own protocol at sample
  scale: training and validation from folds 0-1 (split by person, at least 3 people of each class in
  validation), at most 80 cells of each person there (about 2,900 cells of 42 people: an 11-minute fine-tune on
  2 CPU cores), fold 2 whole as the test part (people never seen), the preliminary test set unused; a
  subject-wise train/val/test split where the folds are not there; the paper's recipe otherwise.
- ``ci``: small and fast (minutes on 2 CPU cores): a subset of cells at 128 px, 1 epoch.

Where torchvision's ImageNet weights cannot be downloaded (no internet), ``sample`` and ``ci`` fall
back to the offline ImageNet-pretrained EfficientNet-Lite0 and say so; ``paper`` does not fall back
(it would no longer be the paper's model) unless the caller names another backbone or weights.

The profile is chosen by argument, else by the ``ALLKIT_PROFILE`` environment variable, else ``paper`` on
Colab with a GPU and ``sample`` anywhere else.
"""

import os
import sys
from dataclasses import asdict, dataclass, replace

from allkit.constants import BATCH_SIZE, EPOCHS, IMAGE_SIZE, LEARNING_RATE, MAX_INPUT_SIZE, SEED, XGB_ETA
from allkit.errors import ConfigError

ENV_PROFILE = "ALLKIT_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    # "paper" (needs the preliminary test set), "folds" (test on fold 2, train on folds 0-1), "subject", "image"
    # (leaky, on purpose), or "auto": paper when possible
    split: str = "auto"
    backbone: str = "efficientnet_b0"
    weights: str | None = "imagenet"
    fallback_backbone: str | None = "efficientnet_lite0"  # used when the weights cannot be had
    image_size: int = IMAGE_SIZE
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    normalize: bool = True
    max_train_cells: int | None = None  # a seeded, class-stratified subset, per split part
    # At most this many cells of each person in training and validation (seeded): people matter more than
    # cells (chapter 12's donor curve), so a CPU budget is better spent on all people than on all cells.
    max_cells_per_subject: int | None = None
    max_eval_cells: int | None = None
    max_batches: int | None = None  # per epoch
    xgb_eta: float = XGB_ETA
    xgb_estimators: int = 100
    val_size: float = 0.2
    test_size: float = 0.2
    seed: int = SEED
    n_gradcam: int = 4  # cells per class in the Grad-CAM figure
    n_boot: int = 1000

    def __post_init__(self):
        def positive(value, optional=False):
            return (optional and value is None) or (
                isinstance(value, int) and not isinstance(value, bool) and value > 0
            )

        def fraction(value, low=0.0):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value < 1

        checks = {
            "split": self.split in ("auto", "paper", "folds", "subject", "image"),
            "image_size": positive(self.image_size) and self.image_size <= MAX_INPUT_SIZE,
            "epochs": positive(self.epochs),
            "batch_size": positive(self.batch_size),
            "lr": isinstance(self.lr, (int, float)) and 0 < self.lr < 10,
            "normalize": isinstance(self.normalize, bool),
            "max_train_cells": positive(self.max_train_cells, optional=True),
            "max_cells_per_subject": positive(self.max_cells_per_subject, optional=True),
            "max_eval_cells": positive(self.max_eval_cells, optional=True),
            "max_batches": positive(self.max_batches, optional=True),
            "xgb_eta": isinstance(self.xgb_eta, (int, float)) and 0 < self.xgb_eta <= 1,
            "xgb_estimators": positive(self.xgb_estimators),
            "val_size": fraction(self.val_size),
            "test_size": fraction(self.test_size),
            "seed": isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32,
            "n_gradcam": positive(self.n_gradcam),
            "n_boot": positive(self.n_boot),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"profile {self.name!r}: {name}={getattr(self, name)!r} is not a valid value "
                    "(sizes, epochs and counts are positive integers, rates and fractions positive)"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "Profile":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PROFILES = {
    "paper": Profile(name="paper", split="paper", normalize=False, fallback_backbone=None),
    "sample": Profile(name="sample", split="folds", max_cells_per_subject=80),
    "ci": Profile(
        name="ci",
        split="folds",
        image_size=128,
        epochs=1,
        max_train_cells=240,
        max_eval_cells=160,
        xgb_estimators=50,
        n_gradcam=2,
        n_boot=200,
    ),
}


def default_profile() -> str:
    """``paper`` on Colab with a GPU (what the book is meant to run there), else ``sample``."""
    import torch  # here, not at the top: `allkit --help` must not wait for torch

    return "paper" if "google.colab" in sys.modules and torch.cuda.is_available() else "sample"


def get_profile(name: str | None = None) -> Profile:
    """The profile ``name``, else ``ALLKIT_PROFILE``, else :func:`default_profile`."""
    name = name or os.environ.get(ENV_PROFILE) or default_profile()
    if name not in PROFILES:
        raise ConfigError(f"profile {name!r} is unknown; expected one of {', '.join(PROFILES)}")
    return PROFILES[name]

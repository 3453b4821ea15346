"""Run profiles: the same method at three sizes.

- ``paper``: the exact protocol on the full C-NMC 2019 download (train on ``training_data``, the
  preliminary test set halved into validation and test by subject), EfficientNet-B0 with torchvision's
  ImageNet weights, 224 px, 5 epochs of Adamax at 1e-3, batch 40, no ImageNet normalisation (the
  paper's pipeline ends at ``ToTensor``). What a Colab GPU user runs.
- ``sample``: a full run on what is present (the real fold-1 sample here) that CPUs finish: a
  subject-wise train/val/test split, the paper's recipe otherwise.
- ``ci``: small and fast (minutes on 2 CPU cores): a subset of cells at 128 px, 1 epoch.

Where torchvision's ImageNet weights cannot be downloaded (no internet), ``sample`` and ``ci`` fall
back to the offline ImageNet-pretrained EfficientNet-Lite0 and say so; ``paper`` does not fall back
(it would no longer be the paper's model) unless the caller names another backbone or weights.

The profile is chosen by argument, else by the ``ALLKIT_PROFILE`` environment variable, else ``sample``.
"""

import os
from dataclasses import asdict, dataclass, replace

from allkit.constants import BATCH_SIZE, EPOCHS, IMAGE_SIZE, LEARNING_RATE, SEED, XGB_ETA
from allkit.errors import ConfigError

ENV_PROFILE = "ALLKIT_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    split: str = "auto"  # "paper" (needs the preliminary test set), "subject", or "auto": paper when possible
    backbone: str = "efficientnet_b0"
    weights: str | None = "imagenet"
    fallback_backbone: str | None = "efficientnet_lite0"  # used when the weights cannot be had
    image_size: int = IMAGE_SIZE
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    normalize: bool = True
    max_train_cells: int | None = None  # a seeded, class-stratified subset, per split part
    max_eval_cells: int | None = None
    max_batches: int | None = None  # per epoch
    xgb_eta: float = XGB_ETA
    xgb_estimators: int = 100
    val_size: float = 0.2
    test_size: float = 0.2
    seed: int = SEED
    n_gradcam: int = 4  # cells per class in the Grad-CAM figure
    n_boot: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "Profile":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PROFILES = {
    "paper": Profile(name="paper", split="paper", normalize=False, fallback_backbone=None),
    "sample": Profile(name="sample", split="subject"),
    "ci": Profile(
        name="ci",
        split="subject",
        image_size=128,
        epochs=1,
        max_train_cells=240,
        max_eval_cells=160,
        xgb_estimators=50,
        n_gradcam=2,
        n_boot=200,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    name = name or os.environ.get(ENV_PROFILE) or "sample"
    if name not in PROFILES:
        raise ConfigError(f"profile {name!r} is unknown; expected one of {', '.join(PROFILES)}")
    return PROFILES[name]

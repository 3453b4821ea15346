"""Numbers the paper fixes, in one place, each with the part of the paper it comes from.

Label convention used everywhere in allkit: **ALL (malignant) = 1, HEM (normal) = 0**,
the same as the C-NMC preliminary-test CSV (``labels`` column, 1 = ALL).
"""

from __future__ import annotations

# The paper's preprocessing: C-NMC cells are 450x450; the paper centre-crops 448 and resizes to 224.
ORIGINAL_SIZE = 450
CROP_SIZE = 448
IMAGE_SIZE = 224

# The paper's augmentation: flips with p=0.2 each, rotation up to 10 degrees.
FLIP_PROBABILITY = 0.2
ROTATION_DEGREES = 10.0

# The paper's fine-tuning recipe: Adamax, lr 1e-3, batch 40, 5 epochs, cross-entropy.
BATCH_SIZE = 40
LEARNING_RATE = 1e-3
EPOCHS = 5

# The paper's hybrid: XGBoost learning rate (eta).
XGB_ETA = 0.35

# Results: the paper's headline results, quoted (never used as expected values in tests).
PAPER_ACCURACY_CNN = 0.81
PAPER_ACCURACY_HYBRID = 0.85

# ImageNet statistics used by torchvision's pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Labels. ALL = 1 everywhere (matches the C-NMC prelim CSV).
LABEL_ALL = 1
LABEL_HEM = 0
CLASS_NAMES = ("HEM", "ALL")  # index == label
CLASS_TO_LABEL = {"HEM": LABEL_HEM, "ALL": LABEL_ALL}

# Expected sizes of the public data set (Kaggle mirror / TCIA), used to warn on incomplete downloads.
EXPECTED_COUNTS = {
    "fold_0": 3527,
    "fold_1": 3581,
    "fold_2": 3553,
    "training": 10661,
    "training_ALL": 7272,
    "training_HEM": 3389,
    "prelim": 1867,
    "final": 2586,
}

SEED = 42

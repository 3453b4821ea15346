"""The numbers the paper fixes, in one place, each named for the step it belongs to.

Labels everywhere in allkit: **ALL (malignant) = 1, HEM (normal) = 0**, as in the C-NMC
preliminary-test CSV (its ``labels`` column, 1 = ALL).
"""

# Preprocessing: C-NMC cells are 450x450 px; the paper centre-crops 448 and resizes to 224.
ORIGINAL_SIZE = 450
CROP_SIZE = 448
CROP_RATIO = CROP_SIZE / ORIGINAL_SIZE  # as a fraction of the shorter side, so other sizes scale
IMAGE_SIZE = 224
# What allkit accepts as a cell image (the release's are all 450x450): anything smaller, longer or larger is
# refused with a message rather than cropped to a few pixels or decoded into gigabytes.
MIN_CELL_SIDE, MAX_CELL_ASPECT, MAX_CELL_PIXELS = 64, 2.0, 4096 * 4096
MAX_INPUT_SIZE = 1024  # the largest network input (preprocessing size) allkit resizes cells to

# Augmentation (training only): horizontal and vertical flips with p = 0.2 each, rotation up to 10 deg.
FLIP_PROBABILITY = 0.2
ROTATION_DEGREES = 10.0

# Fine-tuning: Adamax, learning rate 1e-3, batch 40, 5 epochs, cross-entropy.
BATCH_SIZE = 40
LEARNING_RATE = 1e-3
EPOCHS = 5

# The hybrid: XGBoost with learning rate (eta) 0.35 on the CNN's pooled features.
XGB_ETA = 0.35

# The statistics torchvision's ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LABEL_HEM = 0
LABEL_ALL = 1
CLASS_NAMES = ("HEM", "ALL")  # index == label
CLASS_TO_LABEL = {"HEM": LABEL_HEM, "ALL": LABEL_ALL}

# Sizes of the public release (Kaggle mirror / TCIA), to warn about incomplete downloads.
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

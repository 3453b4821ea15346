"""What the paper reports, in one place, each number with the table or sentence it comes from (Somu,
Ramanathan and Luitel, *Advancing the Diagnosis of Acute Lymphoblastic Leukemia with Hybrid Neural Networks*,
Journal of Student Research, High School Edition). Quoted to sit beside this book's measurements; never used as
expected values in tests.
"""

CITATION = "somu2024advancing"

# "Once we implemented the XGBoost model on top of our EfficientNetB0 model, our accuracy increased from 81% to 85%."
CNN_ALONE_ACCURACY = 0.81
HYBRID_ACCURACY = 0.85

# Table 1. Accuracy scores of our model with each feature extractor.
TABLE_1 = {"vgg16": 0.71, "resnet18": 0.78, "inception_v3": 0.81, "efficientnet_b0": 0.85}

# Table 2. Precision, recall, and f1-scores of the EfficientNetB0 hybrid model.
TABLE_2 = {
    "ALL": {"precision": 0.86, "recall": 0.91, "f1-score": 0.89},
    "HEM": {"precision": 0.82, "recall": 0.72, "f1-score": 0.77},
}

# Table 3. A comparison of the proposed model to other models from previous works that have used the same dataset.
TABLE_3 = {
    "ResNet50 (Rezayi et al.)": 0.816,
    "CNN (Rezayi et al.)": 0.821,
    "VGG-16 (Rezayi et al.)": 0.846,
    "DCT-LSTM and CNN (Shah et al.)": 0.866,
    "ResRandSVM (Sulaiman et al.)": 0.900,
    "ECA-Net Based on VGG16 (Ullah et al.)": 0.911,
    "Proposed Model": 0.850,
}

# Parameter counts the paper quotes (its introduction and conclusion): (count, exact?). For VGG16 it says only
# "over 128,000,000" (of the VGG16 in VGG16 + ECA); the others are exact.
PARAMETER_COUNTS = {
    "efficientnet_b0": (5_288_548, True),
    "resnet50": (25_557_032, True),
    "inception_v3": (27_161_264, True),
    "vgg16": (128_000_000, False),
}

# The figures, numbered as in the paper.
FIGURES = {
    5: "Attention heatmaps for the feature extractor (Grad-CAM of two ALL and two HEM cells)",
    6: "Accuracy of the EfficientNetB0 feature extractor (training curves)",
    7: "Confusion matrix of the final model",
    8: "XGBoost classifier error (per boosting round)",
}

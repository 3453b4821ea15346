"""allkit: reproduce and teach the EfficientNet-B0 + XGBoost leukemia classifier on C-NMC 2019."""

from __future__ import annotations

__version__ = "0.1.0"

from allkit.constants import CLASS_NAMES, LABEL_ALL, LABEL_HEM  # noqa: E402

__all__ = ["__version__", "CLASS_NAMES", "LABEL_ALL", "LABEL_HEM"]

"""allkit: reproduce and teach the EfficientNet-B0 + XGBoost leukemia classifier on C-NMC 2019."""

from __future__ import annotations

__version__ = "0.1.0"

import warnings  # noqa: E402

from allkit.constants import CLASS_NAMES, LABEL_ALL, LABEL_HEM  # noqa: E402

# tqdm.auto in a notebook without ipywidgets warns "IProgress not found" (with a site-packages path) and then
# draws a text bar anyway: the bar is all a reader needs, the warning is noise on the first output of a chapter.
warnings.filterwarnings("ignore", message="IProgress not found")  # issued on behalf of the importing module

__all__ = ["__version__", "CLASS_NAMES", "LABEL_ALL", "LABEL_HEM"]

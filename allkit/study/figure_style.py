"""What every figure of allkit shares: one colour and one long name per class, and new Axes when none are given."""

import matplotlib.pyplot as plt
import numpy as np

from allkit.errors import DataError

#: One colour per class, indexed by label (HEM = 0, ALL = 1).
CLASS_COLORS = ("#1f77b4", "#d62728")
CLASS_LONG_NAMES = ("HEM (normal)", "ALL (malignant)")


def new_axes(ax, figsize=(6, 4.5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def new_axes_row(axes, n, figsize):
    if axes is None:
        fig, axes = plt.subplots(1, n, figsize=figsize, layout="constrained", squeeze=False)
        return fig, list(axes[0])
    axes = list(np.ravel(axes))
    if len(axes) < n:
        raise DataError(f"got {len(axes)} Axes: expected at least {n} for this figure")
    return axes[0].figure, axes[:n]

"""Figures of cells: example cells per class (the paper's FIG 1) and Grad-CAM heatmaps over them (FIG 5).

The conventions of :mod:`allkit.study.plots` hold here too (a Figure returned, axes labelled, HEM blue, ALL red).
"""

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from allkit import transforms
from allkit.constants import CLASS_NAMES, LABEL_ALL, LABEL_HEM
from allkit.errors import DataError
from allkit.explain import GradCamResult, gradcam
from allkit.study.figure_style import CLASS_COLORS, CLASS_LONG_NAMES


# --------------------------------------------------------------------------------------------------
# image grids (FIG 1, Grad-CAM)
# --------------------------------------------------------------------------------------------------
def _to_display(image: Any, denormalize: bool = False) -> np.ndarray:
    """An image as float HxWx3 in [0, 1] for display (uint8 HWC, float HWC, or CHW tensor/array)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"image has shape {arr.shape}: expected HxWx3 (uint8) or 3xHxW (tensor)")
    if arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # CHW -> HWC
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] not in (1, 3):
        raise DataError(f"image has shape {arr.shape}: expected 1 or 3 channels (HxWx3 or 3xHxW)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if denormalize:  # from the ImageNet-normalised network input back to [0, 1]
        arr = transforms.denormalize(torch.from_numpy(arr).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    elif arr.min() < 0 or arr.max() > 1:
        if arr.max() <= 255 and arr.min() >= 0:
            arr = arr / 255.0
        else:  # e.g. an ImageNet-normalised tensor shown without denormalize=True: stretch for display
            arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    return np.clip(arr, 0.0, 1.0)


def _check_label_list(labels, n, name="labels") -> list[int]:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = [int(v) for v in np.asarray(labels).ravel()]
    if len(labels) != n:
        raise DataError(f"{name} has {len(labels)} entries but there are {n} images: expected equal lengths")
    bad = sorted({v for v in labels if v not in (LABEL_HEM, LABEL_ALL)})
    if bad:
        raise DataError(f"{name} has label(s) {bad}: expected only 0 (HEM) or 1 (ALL)")
    return labels


def _image_axes(ax, xlabel: str, ylabel: str = "", color: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(xlabel, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, color=color or "black")
    if color is not None:
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2)


def plot_sample_grid(
    images: Sequence[Any],
    labels,
    n_per_class: int = 4,
    titles: Sequence[str] | None = None,
    denormalize: bool = False,
    title: str = "C-NMC 2019 cell images",
) -> Figure:
    """Example cells, one row per class (HEM first, then ALL) -- the paper's FIG 1.

    ``images`` are uint8 HxWx3 arrays or CHW tensors/arrays (float in [0, 1]; pass
    ``denormalize=True`` for ImageNet-normalised tensors). The first ``n_per_class`` images of each
    class are shown; ``titles`` (one per image) become the captions under the images (default:
    ``"<class> #<index>"``). Each row's first image carries the class name as its y label.
    """
    images = list(images)
    if not images:
        raise DataError("images is empty: expected at least one image")
    labels = _check_label_list(labels, len(images))
    if titles is not None and len(titles) != len(images):
        raise DataError(f"titles has {len(titles)} entries but there are {len(images)} images: expected equal")
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise DataError(f"n_per_class={n_per_class!r}: expected a positive integer")
    fig, axes = plt.subplots(2, n_per_class, figsize=(2.2 * n_per_class, 5.0), squeeze=False, layout="constrained")
    for row, label in enumerate((LABEL_HEM, LABEL_ALL)):
        chosen = [i for i, v in enumerate(labels) if v == label][:n_per_class]
        for col in range(n_per_class):
            ax = axes[row, col]
            ylabel = CLASS_LONG_NAMES[label] if col == 0 else ""
            if col < len(chosen):
                i = chosen[col]
                ax.imshow(_to_display(images[i], denormalize))
                caption = titles[i] if titles is not None else f"{CLASS_NAMES[label]} #{i}"
                _image_axes(ax, caption, ylabel, CLASS_COLORS[label])
            else:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes, color="grey")
                _image_axes(ax, "(none)", ylabel)
    fig.suptitle(title)
    return fig


def plot_gradcam_grid(
    images: Sequence[Any],
    heatmaps: Sequence[Any],
    labels,
    preds=None,
    image_weight: float = 0.5,
    denormalize: bool = False,
    title: str = "Grad-CAM",
) -> Figure:
    """Each image next to its Grad-CAM overlay (one row per image).

    ``heatmaps`` are HxW arrays in [0, 1] matching each image's size (from :mod:`allkit.explain`);
    the overlay is ``pytorch_grad_cam.utils.image.show_cam_on_image`` on the image as float [0, 1]
    RGB. Row captions give the true class and, when ``preds`` is given, the predicted class.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image  # imports torch/cv2: only when needed

    images = list(images)
    heatmaps = list(heatmaps)
    if not images:
        raise DataError("images is empty: expected at least one image")
    if len(heatmaps) != len(images):
        raise DataError(f"heatmaps has {len(heatmaps)} entries but images has {len(images)}: expected equal")
    labels = _check_label_list(labels, len(images))
    preds = None if preds is None else _check_label_list(preds, len(images), "preds")
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(5.0, 2.5 * n), squeeze=False, layout="constrained")
    for i, (image, heat) in enumerate(zip(images, heatmaps, strict=True)):
        rgb = _to_display(image, denormalize)
        if hasattr(heat, "detach"):
            heat = heat.detach().cpu().numpy()
        heat = np.asarray(heat, dtype=np.float32)
        heat = np.squeeze(heat) if heat.ndim > 2 else heat
        if heat.shape != rgb.shape[:2]:
            raise DataError(f"heatmap {i} has shape {heat.shape}: expected {rgb.shape[:2]} (the size of image {i})")
        if np.isnan(heat).any() or heat.min() < 0 or heat.max() > 1:
            raise DataError(f"heatmap {i} has values outside [0, 1] or NaN: expected a normalised Grad-CAM map")
        overlay = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=image_weight)
        true_name = CLASS_NAMES[labels[i]]
        caption = f"true {true_name}"
        color = CLASS_COLORS[labels[i]]
        if preds is not None:
            caption += f", predicted {CLASS_NAMES[preds[i]]}"
            color = "green" if preds[i] == labels[i] else "orange"
        axes[i, 0].imshow(rgb)
        _image_axes(axes[i, 0], "original", caption, color)
        axes[i, 1].imshow(overlay)
        _image_axes(axes[i, 1], "Grad-CAM overlay", caption, color)
        if i == 0:
            axes[i, 0].set_title("Image")
            axes[i, 1].set_title("Grad-CAM")
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------
# Grad-CAM: two targets on the same cells
# --------------------------------------------------------------------------------------------------
def plot_gradcam_comparison(
    first,
    second,
    titles: tuple[str, str] = ("target 1", "target 2"),
    image_weight: float = 0.5,
    title: str = "Grad-CAM, two targets",
) -> Figure:
    """Each cell, then its Grad-CAM overlay for two targets side by side (one row per cell).

    ``first`` and ``second`` are :class:`allkit.explain.GradCamResult` of the same images (e.g. ImageNet
    class 181, as the authors' code asked, and the cell's true class).
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if len(first) == 0 or len(first) != len(second):
        raise DataError(
            f"expected two Grad-CAM results of the same non-empty set of images, got {len(first)} "
            f"and {len(second)} images"
        )
    if not np.array_equal(first.images, second.images):
        raise DataError("the two Grad-CAM results explain different images: expected the same cells")
    labels = first.labels if first.labels is not None else second.labels
    n = len(first)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False, layout="constrained")
    for i in range(n):
        rgb = first.images[i].astype(np.float32) / 255.0
        caption = f"true {CLASS_NAMES[labels[i]]}" if labels is not None else ""
        axes[i, 0].imshow(first.images[i])
        _image_axes(axes[i, 0], "original", caption)
        for column, result in ((1, first), (2, second)):
            overlay = show_cam_on_image(rgb, result.heatmaps[i], use_rgb=True, image_weight=image_weight)
            axes[i, column].imshow(overlay)
            _image_axes(axes[i, column], f"explains class {result.targets[i]}", caption)
        if i == 0:
            axes[i, 0].set_title("Cell")
            axes[i, 1].set_title(titles[0])
            axes[i, 2].set_title(titles[1])
    fig.suptitle(title)
    return fig


def plot_gradcam_result(result: GradCamResult, title: str = "Grad-CAM", **kwargs) -> Figure:
    """:func:`plot_gradcam_grid` of a :func:`allkit.explain.gradcam` result: each cell next to its map,
    framed green where the CNN's own prediction was right and orange where it was wrong."""
    if result.labels is None:
        raise DataError("this Grad-CAM result has no true labels: pass labels= to gradcam()")
    preds = result.predictions if set(result.predictions) <= {LABEL_HEM, LABEL_ALL} else None
    return plot_gradcam_grid(
        list(result.images), list(result.heatmaps), result.labels, preds=preds, title=title, **kwargs
    )


def plot_gradcam(model, backbone, images, labels, *, normalize=True, target="true", title="Grad-CAM") -> Figure:
    """Grad-CAM of ``model`` for uint8 ``images`` [B, 3, H, W] (the true class by default), as a figure."""
    return plot_gradcam_result(gradcam(model, backbone, images, target, labels, normalize=normalize), title=title)

"""Grad-CAM heatmaps for the fine-tuned classifiers (the paper's FIG 5), via ``pytorch-grad-cam``.

::

    from allkit.explain import gradcam, gradcam_files, save_overlays

    res = gradcam(model, "efficientnet_b0", images_uint8, target="true", labels=y)   # [B,3,H,W] uint8
    res.heatmaps            # float32 [B, H, W] in [0, 1], one map per image, same size as the input
    res.plot()              # image | overlay grid (allkit.plots.plot_gradcam_grid)
    save_overlays(gradcam_files(model, "efficientnet_b0", ["cell.bmp"]), "out/")   # what `allkit gradcam` does

What is computed: ``pytorch_grad_cam.GradCAM`` (or another of its gradient methods, ``method=``) on the
backbone's usual Grad-CAM layer (``get_spec(backbone).gradcam_layer``: EfficientNet-B0's last
``features`` block, ResNet's ``layer4[-1]``, ...), for the class chosen by ``target``:

* ``"predicted"``: the model's argmax for each image;
* ``"true"``: ``labels[i]`` (needs ``labels``);
* ``"ALL"`` / ``"HEM"``: class 1 / class 0 of the 2-class head (case-insensitive);
* an ``int``, or a list with one ``int`` (or one of the names above) per image: any class index below
  the model's number of outputs, e.g. ImageNet class 181 on a ``num_classes=1000`` model -- what the
  authors' notebook computed (the pitfall study), rather than ALL or HEM.

Each heatmap is min-max scaled **per image** by pytorch-grad-cam (so maps are comparable in shape, not
in magnitude across images) and resized to the input size. The model gets the batch through
:func:`allkit.transforms.to_model_input` (ImageNet normalisation when ``normalize=True``), runs in eval
mode during the CAM (Inception-v3 would return tuples in train mode) and every module's train/eval flag
is restored afterwards. The hooks are released on exit, also on error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from allkit.atomic import atomic_file
from allkit.constants import CLASS_NAMES, CLASS_TO_LABEL, IMAGE_SIZE, LABEL_ALL, LABEL_HEM
from allkit.errors import DataError, ModelError

__all__ = ["CAM_METHODS", "GradCamResult", "gradcam", "gradcam_files", "save_overlays"]

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigengradcam")
"""Values accepted by ``method=`` (gradient-based methods of pytorch-grad-cam; ``"gradcam"`` is the paper's)."""

_CAM_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigengradcam": "EigenGradCAM",
}


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------


@dataclass
class GradCamResult:
    """Output of :func:`gradcam`.

    Attributes:
        heatmaps: float32 ``[B, H, W]`` in [0, 1] (per-image min-max scaled), the input's size.
        images: uint8 ``[B, H, W, 3]``: the images as given (not normalised), for display.
        targets: class index each heatmap explains.
        predictions: the model's argmax class per image.
        probabilities: float32 ``[B, n_classes]`` softmax of the logits.
        labels: true labels if they were passed, else ``None``.
        names: image names (file stems for :func:`gradcam_files`), else ``None``.
        method: the CAM method used.
    """

    heatmaps: np.ndarray
    images: np.ndarray
    targets: list[int]
    predictions: list[int]
    probabilities: np.ndarray
    labels: list[int] | None = None
    names: list[str] | None = None
    method: str = "gradcam"

    def __len__(self) -> int:
        return len(self.heatmaps)

    def overlays(self, image_weight: float = 0.5) -> np.ndarray:
        """uint8 ``[B, H, W, 3]``: ``show_cam_on_image`` (jet colour map) of each heatmap on its image."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        out = [
            show_cam_on_image(img.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=image_weight)
            for img, heat in zip(self.images, self.heatmaps, strict=True)
        ]
        return np.stack(out) if out else np.zeros((0, *self.images.shape[1:]), np.uint8)

    def plot(self, **kw):
        """:func:`allkit.plots.plot_gradcam_grid` of the result (a matplotlib Figure).

        ``labels`` defaults to the stored labels (required there: pass ``labels=`` if none were given to
        :func:`gradcam`); ``preds`` defaults to the predictions when they are HEM/ALL classes.
        """
        from allkit.plots import plot_gradcam_grid

        labels = kw.pop("labels", self.labels)
        if labels is None:
            raise DataError(
                "this Grad-CAM result has no true labels: pass labels=... to plot() (or to gradcam())"
            )
        default_preds = self.predictions if set(self.predictions) <= {LABEL_HEM, LABEL_ALL} else None
        preds = kw.pop("preds", default_preds)
        kw.setdefault("title", f"Grad-CAM ({self.method})" if self.method != "gradcam" else "Grad-CAM")
        return plot_gradcam_grid(list(self.images), list(self.heatmaps), labels, preds=preds, **kw)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _as_uint8_chw(images: Any) -> torch.Tensor:
    """Images in any of the accepted layouts -> uint8 tensor [B, 3, H, W] (CPU)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("images is empty: expected at least one image")
        parts = [_as_uint8_chw(im) for im in images]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise DataError(
                f"images have different sizes {sorted(sizes)}: expected one size (resize them first)"
            )
        return torch.cat(parts)
    if hasattr(images, "mode") and hasattr(images, "size") and not isinstance(images, torch.Tensor):
        from allkit.transforms import to_rgb  # a PIL image

        images = np.asarray(to_rgb(images))
    if isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise DataError(f"images array has shape {images.shape}: expected HxWx3 or BxHxWx3")
        if arr.shape[-1] == 3:
            arr = np.transpose(arr, (0, 3, 1, 2))
        images = torch.from_numpy(np.ascontiguousarray(arr))
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images is a {type(images).__name__}: expected a tensor, array(s) or list of images")
    x = images.detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise DataError(
            f"images has shape {tuple(images.shape)}: expected uint8 [B, 3, H, W], [3, H, W] or HxWx3 arrays"
        )
    if x.shape[0] == 0:
        raise DataError("images is empty: expected at least one image")
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise DataError(
                "floating images must be in [0, 1] (un-normalised); pass uint8 images, not a normalised batch"
            )
        return (x * 255).round().to(torch.uint8)
    raise DataError(f"images have dtype {x.dtype}: expected uint8 (or float in [0, 1])")


def _int_labels(labels: Any, n: int, name: str = "labels") -> list[int]:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels).ravel()
    if arr.size != n:
        raise DataError(f"{name} has {arr.size} entries but there are {n} images: expected one per image")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} has dtype {arr.dtype}: expected integer class indices")
    out = [int(v) for v in arr]
    if any(v < 0 for v in out):
        raise DataError(f"{name} has negative class indices {sorted({v for v in out if v < 0})}")
    return out


def _one_target(t: Any, label: int | None, where: str) -> tuple[int | None, bool]:
    """One target -> (class index or None for 'predicted', whether it was given by HEM/ALL meaning)."""
    if isinstance(t, str):
        key = t.strip().lower()
        if key in ("predicted", "pred"):
            return None, False
        if key == "true":
            if label is None:
                raise DataError(f"{where}='true' needs labels=... (the true class of each image)")
            return label, True
        names = {k.lower(): v for k, v in CLASS_TO_LABEL.items()}
        if key in names:
            return names[key], True
        raise DataError(
            f"{where}={t!r} is not understood: expected 'predicted', 'true', "
            f"{', '.join(repr(c) for c in CLASS_NAMES)} or a class index"
        )
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
        raise DataError(f"{where}={t!r} is a {type(t).__name__}: expected a str or an int class index")
    if t < 0:
        raise ModelError(f"{where}={int(t)} is negative: expected a class index >= 0")
    return int(t), False


def _resolve_targets(target: Any, labels: list[int] | None, n: int) -> tuple[list[int | None], bool]:
    if hasattr(target, "detach"):
        target = target.detach().cpu().numpy()
    if isinstance(target, np.ndarray):
        target = target.item() if target.ndim == 0 else target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise DataError(
                f"target has {len(target)} entries but there are {n} images: expected one per image"
            )
        pairs = [
            _one_target(t, None if labels is None else labels[i], f"target[{i}]")
            for i, t in enumerate(target)
        ]
    else:
        pairs = [_one_target(target, None if labels is None else labels[i], "target") for i in range(n)]
    return [p[0] for p in pairs], any(p[1] for p in pairs)


# --------------------------------------------------------------------------------------------------
# CAM
# --------------------------------------------------------------------------------------------------


def _class_target_type():
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class _ClassTarget(ClassifierOutputTarget):
        """ClassifierOutputTarget that refuses an index the model does not have (instead of IndexError,
        which pytorch-grad-cam's context manager would print and swallow)."""

        def __call__(self, model_output):
            n_out = model_output.shape[-1]
            if self.category >= n_out:
                raise ModelError(
                    f"target class {self.category} does not exist: the model has {n_out} outputs "
                    f"(valid classes 0..{n_out - 1}; for HEM/ALL use 0/1 or 'HEM'/'ALL')"
                )
            return super().__call__(model_output)

    class _PredictedTarget:
        """The model's own top class for this image."""

        def __call__(self, model_output):
            return model_output[..., int(model_output.detach().argmax(-1).reshape(-1)[0])]

    return _ClassTarget, _PredictedTarget


def _resolve_layer(model: nn.Module, backbone: str | None, layer: Any) -> nn.Module:
    if layer is None:
        if backbone is None:
            raise ModelError(
                "gradcam needs a backbone name (e.g. 'efficientnet_b0') or layer=<module to hook>"
            )
        from allkit.models import get_spec

        layer = get_spec(backbone).gradcam_layer(model)
    elif isinstance(layer, str):
        try:
            layer = model.get_submodule(layer)
        except AttributeError as error:
            raise ModelError(f"layer {layer!r} is not a submodule of the model: {error}") from error
    if not isinstance(layer, nn.Module):
        raise ModelError(
            f"layer is a {type(layer).__name__}: expected an nn.Module of the model or its dotted name"
        )
    if not any(m is layer for m in model.modules()):
        raise ModelError("layer is not a submodule of model: its hooks would never fire")
    return layer


def gradcam(
    model: nn.Module,
    backbone: str | None,
    images: Any,
    target: Any = "predicted",
    labels: Any = None,
    *,
    normalize: bool = True,
    layer: nn.Module | str | None = None,
    device: str | torch.device | None = None,
    method: str = "gradcam",
    batch_size: int = 32,
) -> GradCamResult:
    """Grad-CAM heatmaps of ``model`` for ``images``.

    Args:
        model: a classifier from :func:`allkit.models.build_model` (any ``nn.Module`` returning logits, or
            Inception-style tuples, with ``layer=`` given).
        backbone: its name in :func:`allkit.models.list_backbones`, which picks the layer to hook; may be
            ``None`` when ``layer`` is given.
        images: uint8 ``[B, 3, H, W]`` / ``[3, H, W]`` tensor, an HxWx3 / BxHxWx3 uint8 array, or a list of
            those (one size); float tensors are taken as [0, 1]. Not normalised: that is done here.
        target: ``"predicted"`` (default), ``"true"`` (needs ``labels``), ``"ALL"``, ``"HEM"``, an int class
            index (< the model's number of outputs) or a list of those, one per image.
        labels: true class per image (needed for ``target="true"``; kept for :meth:`GradCamResult.plot`).
        normalize: as in training: True (ImageNet), False, or a backbone's (mean, std); see
            :func:`allkit.transforms.to_model_input`.
        layer: the module to hook (or its dotted name); default ``get_spec(backbone).gradcam_layer(model)``.
        device: where to run; ``None`` keeps the model where it is. A different device moves the model
            (``Module.to`` is in place) and leaves it there.
        method: one of :data:`CAM_METHODS`.
        batch_size: images per forward/backward pass.

    Raises:
        DataError: bad images, labels or target spelling, ``"true"`` without labels.
        ModelError: class index not below the model's number of outputs, bad layer or method.
    """
    import pytorch_grad_cam

    from allkit.models import LogitsExtractor
    from allkit.transforms import to_model_input

    key = str(method).strip().lower()
    if key not in _CAM_CLASSES:
        raise ModelError(f"method={method!r} is not supported: expected one of {', '.join(CAM_METHODS)}")
    cam_class = getattr(pytorch_grad_cam, _CAM_CLASSES[key])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")

    pixels = _as_uint8_chw(images)
    n = pixels.shape[0]
    true_labels = None if labels is None else _int_labels(labels, n)
    wanted, by_class_name = _resolve_targets(target, true_labels, n)
    hook_layer = _resolve_layer(model, backbone, layer)

    if device is not None:
        model.to(device)
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        dev = torch.device("cpu") if device is None else torch.device(device)

    class_target, predicted_target = _class_target_type()
    cam_targets = [predicted_target() if k is None else class_target(k) for k in wanted]
    modes = [(m, m.training) for m in model.modules()]
    heat_parts, logit_parts = [], []
    try:
        with torch.enable_grad(), cam_class(model=LogitsExtractor(model), target_layers=[hook_layer]) as cam:
            for start in range(0, n, batch_size):
                x = to_model_input(pixels[start : start + batch_size].to(dev), normalize=normalize)
                # the input requires grad, so a (partly) frozen model still yields gradients at the layer
                x.requires_grad_(True)
                try:
                    heat = cam(input_tensor=x, targets=cam_targets[start : start + batch_size])
                except IndexError as error:  # the context manager would print and swallow an IndexError
                    raise ModelError(
                        f"Grad-CAM failed on the layer {type(hook_layer).__name__}: {error}"
                    ) from error
                heat_parts.append(np.asarray(heat, dtype=np.float32))
                logit_parts.append(cam.outputs.detach().float().cpu())
    finally:
        for module, was_training in modes:
            module.training = was_training
        model.zero_grad(set_to_none=True)

    logits = torch.cat(logit_parts)
    n_classes = int(logits.shape[-1])
    if by_class_name and n_classes != len(CLASS_NAMES):
        warnings.warn(
            f"target given as HEM/ALL/'true' but the model has {n_classes} outputs, not the 2-class "
            "HEM/ALL head: class indices 0/1 of this model were used",
            stacklevel=2,
        )
    predictions = [int(v) for v in logits.argmax(-1)]
    heatmaps = np.clip(np.concatenate(heat_parts), 0.0, 1.0).astype(np.float32)
    if heatmaps.shape != (n, *pixels.shape[-2:]):  # pragma: no cover - pytorch-grad-cam resizes to the input
        raise ModelError(
            f"Grad-CAM returned heatmaps of shape {heatmaps.shape}, expected {(n, *pixels.shape[-2:])}"
        )
    return GradCamResult(
        heatmaps=heatmaps,
        images=np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy()),
        targets=[predictions[i] if k is None else k for i, k in enumerate(wanted)],
        predictions=predictions,
        probabilities=torch.softmax(logits, dim=-1).numpy().astype(np.float32),
        labels=true_labels,
        method=key,
    )


def gradcam_files(
    model: nn.Module,
    backbone: str | None,
    paths: Sequence[str | os.PathLike],
    target: Any = "predicted",
    size: int = IMAGE_SIZE,
    **kwargs,
) -> GradCamResult:
    """:func:`gradcam` on image files, decoded as the data cache does (RGB, centre crop 448/450, resize to
    ``size``: :func:`allkit.transforms.decode_for_cache`). ``kwargs`` go to :func:`gradcam`
    (``labels``, ``normalize``, ``layer``, ``device``, ``method``, ``batch_size``).
    ``result.names`` are the file stems. A missing or unreadable file raises :class:`DataError` naming it.
    """
    from allkit.transforms import decode_for_cache

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise DataError("no image files given: expected at least one path")
    arrays = []
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"image file {os.fspath(p)!r} does not exist (or is not a file)")
        arrays.append(decode_for_cache(p, size=size))
    result = gradcam(model, backbone, np.stack(arrays), target=target, **kwargs)
    result.names = [Path(p).stem for p in paths]
    return result


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def save_overlays(
    result: GradCamResult,
    out_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    image_weight: float = 0.5,
) -> list[Path]:
    """Write ``<out_dir>/<name>_gradcam.png`` per image: the original and its Grad-CAM overlay side by side
    (``[H, 2W, 3]``, left original, right overlay). Each file is written atomically (temporary file +
    ``os.replace``) and carries the target, prediction and probabilities as PNG text metadata.

    ``names`` defaults to ``result.names`` (file stems from :func:`gradcam_files`), else ``image_000``, ...;
    repeated names get ``_1``, ``_2`` suffixes. Returns the written paths in image order.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    n = len(result)
    if names is None:
        names = result.names if result.names is not None else [f"image_{i:03d}" for i in range(n)]
    names = [str(v) for v in names]
    if len(names) != n:
        raise DataError(
            f"names has {len(names)} entries but the result has {n} images: expected one per image"
        )
    bad = [v for v in names if not v or os.sep in v or (os.altsep and os.altsep in v) or v in (".", "..")]
    if bad:
        raise DataError(f"names {bad} are not plain file names")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overlays = result.overlays(image_weight=image_weight)
    written = []
    for i, name in enumerate(_unique(names)):
        panel = np.concatenate([result.images[i], overlays[i]], axis=1)
        info = PngInfo()
        info.add_text("allkit.method", result.method)
        info.add_text("allkit.target", str(result.targets[i]))
        info.add_text("allkit.predicted", str(result.predictions[i]))
        info.add_text("allkit.probabilities", " ".join(f"{p:.6f}" for p in result.probabilities[i]))
        if result.labels is not None:
            info.add_text("allkit.label", str(result.labels[i]))
        path = out / f"{name}_gradcam.png"
        with atomic_file(path, "wb") as fh:
            Image.fromarray(panel).save(fh, format="PNG", pnginfo=info)
        written.append(path)
    return written

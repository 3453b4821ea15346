"""``allkit gradcam``: Grad-CAM of a saved model for image files, written as PNG panels."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from allkit.constants import CROP_RATIO, IMAGE_SIZE
from allkit.data import decode_cell
from allkit.errors import DataError
from allkit.explain import GradCamResult, gradcam
from allkit.files import atomic_file
from allkit.hybrid import HybridClassifier


def gradcam_files(hybrid: HybridClassifier, paths, target="predicted") -> GradCamResult:
    """Grad-CAM of ``hybrid``'s CNN for image files, decoded as its training cells were cached."""
    pre = getattr(hybrid, "preprocessing_", None) or {}
    if not paths:
        raise DataError("no image files given; expected at least one path")
    pixels = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"image file {str(path)!r} does not exist")
        try:
            pixels.append(decode_cell(path, pre.get("size", IMAGE_SIZE), pre.get("crop_ratio", CROP_RATIO)))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable image ({err})") from err
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    return gradcam(hybrid.cnn, hybrid.backbone_, images, target, normalize=hybrid.normalize)


def save_overlays(result: GradCamResult, names: list[str], out_dir) -> list[Path]:
    """``<out_dir>/<name>_gradcam.png`` per image: the cell and its overlay side by side, each written
    atomically, with the target, prediction and probabilities as PNG text. Repeated names get ``_1``, …"""
    if len(names) != len(result.images):
        raise DataError(f"{len(names)} names for {len(result.images)} images; expected one name per image")
    out, written, seen = Path(out_dir), [], {}
    for image, overlay, target, pred, probs, name in zip(
        result.images, result.overlays(), result.targets, result.predictions, result.probabilities, names, strict=True
    ):
        seen[name] = seen.get(name, -1) + 1
        info = PngInfo()
        for key, value in (
            ("target", target),
            ("predicted", pred),
            ("probabilities", " ".join(f"{p:.6f}" for p in probs)),
        ):
            info.add_text(f"allkit.{key}", str(value))
        path = out / f"{name}{f'_{seen[name]}' if seen[name] else ''}_gradcam.png"
        with atomic_file(path) as handle:
            Image.fromarray(np.concatenate([image, overlay], axis=1)).save(handle, format="PNG", pnginfo=info)
        written.append(path)
    return written

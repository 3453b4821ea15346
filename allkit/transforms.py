"""Image pipelines of the paper (its preprocessing and augmentation), split the way allkit's data layer needs them.

The paper's training pipeline, in its order, is::

    CenterCrop(448) -> Resize(224) -> RandomHorizontalFlip(0.2) -> RandomVerticalFlip(0.2)
    -> RandomRotation(10) -> ToTensor (float32 in [0, 1])

allkit adds ImageNet normalisation by default (the pretrained EfficientNet-B0 weights expect it);
``normalize=False`` gives the paper's pipeline exactly.

The pipeline is split in two parts:

* the **deterministic** part (RGB conversion, centre crop at ratio 448/450 of the shorter side, resize) is
  run once per image by :func:`decode_for_cache`, and the data layer stores its output as a uint8 cache of
  shape ``(N, size, size, 3)``;
* the **random** part (flips, rotation) and the conversion to model input run after the cache, on uint8
  CHW tensors: per image with :func:`augment_transform` (torchvision v2), or on whole batches, on any
  device, with per-sample randomness, with :class:`BatchAugment`; then :func:`to_model_input`.

:func:`train_transform` and :func:`eval_transform` are the whole per-image pipelines from a PIL image (the
"authors' style" baseline and the book's step-by-step notebook). Given a PIL image, crop, resize, flips and
rotation run on the PIL image, as in the paper (torchvision's transforms on PIL images), so
``eval_transform(img)`` equals ``to_model_input(decode_for_cache(img))`` (as a CHW tensor) exactly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from allkit.constants import (
    CROP_SIZE,
    FLIP_PROBABILITY,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ORIGINAL_SIZE,
    ROTATION_DEGREES,
)
from allkit.errors import DataError

__all__ = [
    "DEFAULT_CROP_RATIO",
    "BatchAugment",
    "RatioCenterCrop",
    "ToRGB",
    "augment_transform",
    "decode_for_cache",
    "denormalize",
    "describe_pipeline",
    "deterministic_transform",
    "eval_transform",
    "to_model_input",
    "to_rgb",
    "train_transform",
]

DEFAULT_CROP_RATIO = CROP_SIZE / ORIGINAL_SIZE
"""448/450: the paper's centre crop, as a fraction of the shorter side (so other image sizes scale)."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# --------------------------------------------------------------------------------------------------------
# RGB conversion
# --------------------------------------------------------------------------------------------------------


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Return ``image`` as an 8-bit RGB PIL image.

    Grayscale (``L``, ``1``), palette (``P``, ``PA``), alpha (``RGBA``, ``LA``) and ``CMYK`` images go
    through Pillow's conversion (alpha is dropped, as Pillow does). 16-bit grayscale (``I;16*``, and ``I``
    holding values in [0, 65535], as 16-bit PNGs open) is scaled 65535 -> 255 with rounding: Pillow's own
    conversion clips every value above 255 to white.
    """
    if not isinstance(image, PIL.Image.Image):
        raise DataError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"image of mode {mode!r} has values in [{values.min()}, {values.max()}]; "
                "expected 16-bit values in [0, 65535]"
            )
        wide = values.astype(np.uint32)
        eight_bit = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return PIL.Image.fromarray(eight_bit).convert("RGB")
    if mode == "F":
        raise DataError(
            "image of mode 'F' (32-bit float) has no defined intensity range; convert it to 8-bit"
        )
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise DataError(f"cannot convert an image of mode {mode!r} to RGB: {error}") from error


def _tensor_to_rgb(image: torch.Tensor) -> torch.Tensor:
    if image.ndim < 3:
        raise DataError(f"expected an image tensor [..., C, H, W], got shape {tuple(image.shape)}")
    channels = image.shape[-3]
    if channels == 3:
        return image
    if channels == 1:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:]).clone()
    if channels == 4:  # drop alpha, as Pillow's RGBA -> RGB does
        return image[..., :3, :, :].clone()
    raise DataError(
        f"expected 1, 3 or 4 channels in an image tensor [..., C, H, W], got shape {tuple(image.shape)}"
    )


class ToRGB(v2.Transform):
    """v2 transform: PIL image -> :func:`to_rgb`; tensor [..., C, H, W] with 1, 3 or 4 channels -> 3."""

    def transform(self, inpt, params):
        if isinstance(inpt, PIL.Image.Image):
            return to_rgb(inpt)
        rgb = _tensor_to_rgb(inpt)
        if rgb is inpt or not isinstance(inpt, tv_tensors.TVTensor):
            return rgb
        return tv_tensors.wrap(rgb, like=inpt)


# --------------------------------------------------------------------------------------------------------
# Deterministic part
# --------------------------------------------------------------------------------------------------------


class RatioCenterCrop(v2.Transform):
    """Square centre crop of side ``round(ratio * shorter side)``; 448/450 gives the paper's CenterCrop(448)."""

    def __init__(self, ratio: float = DEFAULT_CROP_RATIO) -> None:
        super().__init__()
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"crop_ratio must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)

    def crop_size(self, height: int, width: int) -> int:
        shorter = min(int(height), int(width))
        return max(1, min(shorter, round(self.ratio * shorter)))

    def transform(self, inpt, params):
        height, width = F.get_size(inpt)
        side = self.crop_size(height, width)
        return F.center_crop(inpt, [side, side])

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:.6g}"


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _deterministic_steps(size: int, crop_ratio: float) -> list:
    size = _check_size(size)
    return [ToRGB(), RatioCenterCrop(crop_ratio), v2.Resize((size, size), antialias=True)]


def deterministic_transform(size: int = IMAGE_SIZE, crop_ratio: float = DEFAULT_CROP_RATIO) -> v2.Compose:
    """PIL image or tensor -> RGB -> square centre crop of ``round(crop_ratio * shorter side)`` -> Resize(size).

    Returns a v2 transform whose output is a plain uint8 tensor [3, size, size]. For a 450x450 image at the
    defaults this is exactly ``CenterCrop(448) -> Resize(224)``. A PIL input is cropped and resized by PIL
    (as the paper's torchvision-on-PIL pipeline does); a tensor input by torchvision's tensor kernels.
    """
    return v2.Compose(
        [
            *_deterministic_steps(size, crop_ratio),
            v2.ToImage(),
            v2.ToDtype(torch.uint8, scale=True),
            v2.ToPureTensor(),
        ]
    )


@functools.lru_cache(maxsize=8)
def _cached_deterministic(size: int, crop_ratio: float) -> v2.Compose:
    return deterministic_transform(size, crop_ratio)


def decode_for_cache(
    pil_image: PIL.Image.Image | str | os.PathLike,
    size: int = IMAGE_SIZE,
    crop_ratio: float = DEFAULT_CROP_RATIO,
) -> np.ndarray:
    """One image (PIL image, or a path to open) -> the cache's row: uint8 array (size, size, 3), HWC RGB."""
    if isinstance(pil_image, (str, os.PathLike)):
        try:
            with PIL.Image.open(pil_image) as opened:
                opened.load()
                pil_image = opened.copy()
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read image {os.fspath(pil_image)!r}: {error}") from error
    if not isinstance(pil_image, PIL.Image.Image):
        raise DataError(f"decode_for_cache expects a PIL image or a path, got {type(pil_image).__name__}")
    chw = _cached_deterministic(_check_size(size), float(crop_ratio))(pil_image)
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


# --------------------------------------------------------------------------------------------------------
# Random part and whole pipelines
# --------------------------------------------------------------------------------------------------------


def _random_steps(p_hflip: float, p_vflip: float, degrees: float) -> list:
    return [
        v2.RandomHorizontalFlip(p=p_hflip),
        v2.RandomVerticalFlip(p=p_vflip),
        v2.RandomRotation(degrees=degrees, interpolation=v2.InterpolationMode.NEAREST, fill=0),
    ]


def augment_transform(
    p_hflip: float = FLIP_PROBABILITY,
    p_vflip: float = FLIP_PROBABILITY,
    degrees: float = ROTATION_DEGREES,
) -> v2.Compose:
    """The paper's random part for one image (uint8 CHW tensor or PIL): flips 0.2 / 0.2, rotation +-10 deg.

    Uses torch's global RNG (seed with ``torch.manual_seed``). For batches use :class:`BatchAugment`:
    a v2 transform applied to a batch tensor draws one set of random parameters for the whole batch.
    """
    return v2.Compose(_random_steps(p_hflip, p_vflip, degrees))


def _to_float_steps(normalize: bool) -> list:
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)))
    steps.append(v2.ToPureTensor())
    return steps


def train_transform(size: int = IMAGE_SIZE, normalize: bool = True) -> v2.Compose:
    """The paper's training pipeline for one PIL image, in its order, ending in float32 [3, size, size].

    RGB -> CenterCrop(448/450 of the shorter side) -> Resize(size) -> RandomHorizontalFlip(0.2) ->
    RandomVerticalFlip(0.2) -> RandomRotation(10) -> float32 in [0, 1] (-> ImageNet Normalize if
    ``normalize``; ``normalize=False`` is the paper's pipeline exactly).
    """
    return v2.Compose(
        [
            *_deterministic_steps(size, DEFAULT_CROP_RATIO),
            *_random_steps(FLIP_PROBABILITY, FLIP_PROBABILITY, ROTATION_DEGREES),
            *_to_float_steps(normalize),
        ]
    )


def eval_transform(size: int = IMAGE_SIZE, normalize: bool = True) -> v2.Compose:
    """:func:`train_transform` without its random operations (deterministic)."""
    return v2.Compose([*_deterministic_steps(size, DEFAULT_CROP_RATIO), *_to_float_steps(normalize)])


# --------------------------------------------------------------------------------------------------------
# Batched augmentation (any device, per-sample randomness)
# --------------------------------------------------------------------------------------------------------


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` draws in [0, 1): from ``generator`` on its own device, else from the global CPU RNG."""
    draw_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=draw_device).to(device)


def _rotation_grid(angles: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Sampling grid [B, H, W, 2] rotating each image by ``angles`` degrees counter-clockwise about its centre.

    Built exactly as torchvision's ``rotate`` builds its grid (inverse matrix in pixel units about the centre,
    normalised after the matrix product, ``align_corners=False``), one matrix per sample.
    """
    device = angles.device
    # the matrix in double precision, as torchvision computes it in Python floats (MPS has no float64)
    precise = torch.float32 if device.type == "mps" else torch.float64
    radians = torch.deg2rad(angles.to(precise))
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # torchvision: matrix = _get_inverse_affine_matrix([0, 0], -angle, ...) = [cos, -sin, 0, sin, cos, 0]
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).to(dtype).view(-1, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(
        torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=dtype, device=device)
    rescaled = theta.transpose(1, 2) / scale  # [B, 3, 2]
    grid = base.view(1, height * width, 3).expand(theta.shape[0], -1, -1).bmm(rescaled)
    return grid.view(-1, height, width, 2)


def _augment_pil(batch: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flips and rotation of a uint8 CPU batch, image by image with Pillow (nearest, zero fill): exactly
    what torchvision's ``RandomHorizontalFlip -> RandomVerticalFlip -> RandomRotation`` do to the paper's
    PIL images, and several times cheaper on a CPU than flipping and ``grid_sample``-ing the whole batch."""
    nhwc = batch.permute(0, 2, 3, 1)  # the cache's own layout: no copy for batches read from it
    out = torch.empty(nhwc.shape, dtype=torch.uint8)
    hflips, vflips, angles = params["hflip"].tolist(), params["vflip"].tolist(), params["angle"].tolist()
    for i in range(len(out)):
        image = PIL.Image.fromarray(nhwc[i].numpy())
        if hflips[i]:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        if vflips[i]:
            image = image.transpose(PIL.Image.Transpose.FLIP_TOP_BOTTOM)
        if angles[i] != 0:
            image = image.rotate(angles[i], resample=PIL.Image.Resampling.NEAREST, fillcolor=0)
        out[i] = torch.from_numpy(np.array(image))
    return out.permute(0, 3, 1, 2)


class BatchAugment(torch.nn.Module):
    """The paper's random augmentation on a whole batch, with independent random draws per sample.

    Each sample is flipped horizontally with probability ``p_hflip``, then vertically with probability
    ``p_vflip``, then rotated by an angle drawn uniformly in ``[-degrees, degrees]`` (counter-clockwise
    positive, about the centre, nearest-neighbour, zero fill): the same operations, in the same order, as
    ``RandomHorizontalFlip -> RandomVerticalFlip -> RandomRotation`` (defaults of
    :func:`augment_transform`), but drawn per sample.

    Rotation: a uint8 batch on the CPU is rotated image by image with Pillow, exactly as torchvision's
    ``RandomRotation`` rotates the paper's PIL images; other dtypes and devices (the GPU) use one batched
    ``grid_sample`` built like torchvision's tensor ``rotate``.

    Works on uint8 or floating tensors [B, C, H, W] (or one image [C, H, W]) on any device and returns the
    same dtype and device. Random numbers come from ``generator`` (on its own device) or, if None, from the
    global CPU RNG, so a seed gives the same draws whatever device the batch is on. Zero fill means black
    for uint8 or [0, 1] input: augment before normalising.
    """

    def __init__(
        self,
        p_hflip: float = FLIP_PROBABILITY,
        p_vflip: float = FLIP_PROBABILITY,
        degrees: float = ROTATION_DEGREES,
        interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        for name, value in (("p_hflip", p_hflip), ("p_vflip", p_vflip)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if float(degrees) < 0:
            raise ValueError(
                f"degrees must be >= 0 (angles are drawn in [-degrees, degrees]), got {degrees!r}"
            )
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        self.p_hflip = float(p_hflip)
        self.p_vflip = float(p_vflip)
        self.degrees = float(degrees)
        self.interpolation = interpolation

    def extra_repr(self) -> str:
        return (
            f"p_hflip={self.p_hflip}, p_vflip={self.p_vflip}, degrees={self.degrees}, "
            f"interpolation={self.interpolation!r}"
        )

    def sample_params(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor]:
        """Draw per-sample parameters: ``hflip``, ``vflip`` (bool [B]) and ``angle`` (degrees, float32 [B]).

        Three uniform draws of size B are taken in this order (hflip, vflip, angle), whatever the
        probabilities, so the stream of a generator does not depend on them.
        """
        device = torch.device(device)
        hflip = _uniform(batch_size, generator, device) < self.p_hflip
        vflip = _uniform(batch_size, generator, device) < self.p_vflip
        angle = (_uniform(batch_size, generator, device) * 2.0 - 1.0) * self.degrees
        return {"hflip": hflip, "vflip": vflip, "angle": angle}

    def apply(self, batch: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply given per-sample parameters (see :meth:`sample_params`) to ``batch`` [B, C, H, W]."""
        if batch.ndim != 4:
            raise DataError(f"expected a batch [B, C, H, W], got shape {tuple(batch.shape)}")
        if batch.dtype == torch.bool or batch.is_complex():
            raise DataError(f"expected a uint8 or floating batch, got dtype {batch.dtype}")
        device = batch.device
        if (device.type == "cpu" and batch.dtype == torch.uint8 and batch.shape[1] == 3
                and self.interpolation == "nearest"):
            return _augment_pil(batch, params)
        out = batch
        hflip = params["hflip"].to(device=device, dtype=torch.bool)
        vflip = params["vflip"].to(device=device, dtype=torch.bool)
        if bool(hflip.any()):
            out = torch.where(hflip.view(-1, 1, 1, 1), out.flip(-1), out)
        if bool(vflip.any()):
            out = torch.where(vflip.view(-1, 1, 1, 1), out.flip(-2), out)
        angle = params["angle"].to(device)
        if bool((angle != 0).any()):
            out = self._rotate(out, angle)
        return out if out is not batch else batch.clone()

    def _rotate(self, batch: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[-2:]
        work_dtype = batch.dtype if batch.dtype in (torch.float32, torch.float64) else torch.float32
        grid = _rotation_grid(angle, height, width, work_dtype)
        rotated = nnf.grid_sample(
            batch.to(work_dtype), grid, mode=self.interpolation, padding_mode="zeros", align_corners=False
        )
        if batch.is_floating_point():
            return rotated.to(batch.dtype)
        info = torch.iinfo(batch.dtype)
        return rotated.round_().clamp_(info.min, info.max).to(batch.dtype)

    def forward(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        single = batch.ndim == 3
        images = batch.unsqueeze(0) if single else batch
        if images.ndim != 4:
            raise DataError(f"expected [B, C, H, W] or [C, H, W], got shape {tuple(batch.shape)}")
        out = self.apply(images, self.sample_params(images.shape[0], generator, images.device))
        return out.squeeze(0) if single else out


# --------------------------------------------------------------------------------------------------------
# Model input and display
# --------------------------------------------------------------------------------------------------------


Normalization = bool | tuple[Sequence[float], Sequence[float]]


def _stats(like: torch.Tensor, normalize: Normalization = True) -> tuple[torch.Tensor, torch.Tensor]:
    # True means ImageNet's statistics; a (mean, std) pair serves backbones trained with others
    # (EfficientNet-Lite0: (x*255 - 127) / 128, see allkit.models.BackboneSpec.mean/std).
    mean_values, std_values = (IMAGENET_MEAN, IMAGENET_STD) if normalize is True else normalize
    mean = torch.tensor(mean_values, dtype=like.dtype, device=like.device).view(3, 1, 1)
    std = torch.tensor(std_values, dtype=like.dtype, device=like.device).view(3, 1, 1)
    return mean, std


def _check_channels(batch: torch.Tensor, name: str) -> None:
    if not isinstance(batch, torch.Tensor):
        raise DataError(f"{name} expects a tensor, got {type(batch).__name__}")
    if batch.ndim not in (3, 4) or batch.shape[-3] != 3:
        raise DataError(f"{name} expects [B, 3, H, W] or [3, H, W], got shape {tuple(batch.shape)}")


def to_model_input(batch: torch.Tensor, normalize: Normalization = True, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, 3, H, W] or [3, H, W] -> float32 in [0, 1] (-> ImageNet-normalised), on the same device.

    ``normalize``: ``True`` (ImageNet mean/std), ``False`` (stay in [0, 1], as the paper's pipeline),
    or a ``(mean, std)`` pair such as a backbone spec's ``(spec.mean, spec.std)``.

    Floating input is taken as already in [0, 1] (only cast to float32, then normalised if asked); other
    integer dtypes are scaled by their maximum. ``channels_last`` returns a 4-D result in
    ``torch.channels_last`` memory format (faster convolutions on GPU).
    """
    _check_channels(batch, "to_model_input")
    if batch.dtype == torch.bool:
        raise DataError("to_model_input expects uint8 or floating images, got dtype torch.bool")
    if normalize is not False and batch.dtype == torch.uint8:
        # One fused pass, x * 1/(255 std) - mean/std: 5-7x faster on a CPU than scaling then normalising.
        mean, std = _stats(torch.empty(0), normalize)
        scale, shift = (1.0 / (255.0 * std)).to(batch.device), (-mean / std).to(batch.device)
        out = torch.addcmul(shift, batch.to(torch.float32), scale)
    else:
        out = F.to_dtype(torch.as_tensor(batch), torch.float32, scale=True)
        if normalize is not False:
            mean, std = _stats(out, normalize)
            out = (out - mean) / std
    if channels_last and out.ndim == 4:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def denormalize(batch: torch.Tensor, clamp: bool = True, normalize: Normalization = True) -> torch.Tensor:
    """Undo normalisation: ``x * std + mean`` -> [0, 1] (clamped unless ``clamp=False``) for display."""
    _check_channels(batch, "denormalize")
    out = batch if batch.is_floating_point() else batch.float()
    if normalize is False:
        return out.clamp(0.0, 1.0) if clamp else out
    mean, std = _stats(out, normalize)
    out = out * std + mean
    return out.clamp(0.0, 1.0) if clamp else out


# --------------------------------------------------------------------------------------------------------
# Description (the book prints it)
# --------------------------------------------------------------------------------------------------------


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def describe_pipeline(normalize: bool = True, train: bool = True, size: int = IMAGE_SIZE) -> list[str]:
    """Human-readable steps of the (training, or evaluation if ``train=False``) pipeline, in order."""
    size = _check_size(size)
    steps = [
        "Convert to 8-bit RGB (grayscale, palette and alpha images via Pillow; 16-bit scaled 65535 -> 255)",
        f"CenterCrop({CROP_SIZE}): keep the central {CROP_SIZE}x{CROP_SIZE} pixels of the "
        f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE} image (other sizes: {CROP_SIZE}/{ORIGINAL_SIZE} of the shorter side)",
        f"Resize({size}): bilinear with antialiasing to {size}x{size} pixels",
    ]
    if train:
        steps += [
            f"RandomHorizontalFlip(p={FLIP_PROBABILITY:g}): mirror left-right with probability {FLIP_PROBABILITY:g}",
            f"RandomVerticalFlip(p={FLIP_PROBABILITY:g}): mirror top-bottom with probability {FLIP_PROBABILITY:g}",
            f"RandomRotation({ROTATION_DEGREES:g}): rotate by an angle drawn uniformly in "
            f"[-{ROTATION_DEGREES:g}, {ROTATION_DEGREES:g}] degrees (nearest neighbour, black corners)",
        ]
    steps.append("ToTensor: float32 tensor [3, H, W] with values in [0, 1]")
    if normalize:
        steps.append(
            f"Normalize(mean={_fmt(IMAGENET_MEAN)}, std={_fmt(IMAGENET_STD)}): ImageNet statistics, as the "
            "pretrained weights expect (not in the paper's list)"
        )
    return steps

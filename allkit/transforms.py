"""The paper's image pipeline, split where the cache splits it.

The paper's training pipeline, in its order::

    CenterCrop(448) → Resize(224) → RandomHorizontalFlip(0.2) → RandomVerticalFlip(0.2)
    → RandomRotation(10) → ToTensor (float32 in [0, 1])

The fixed part (crop, resize) runs once per cell, when the cache is built (:func:`allkit.data.decode_cell`).
The random part runs on whole uint8 batches with a fresh draw per cell (:class:`BatchAugment`), and
:func:`to_model_input` turns a batch into the float input of the network. allkit normalises with the
backbone's statistics by default (the pretrained weights expect it); ``normalize=False`` is the paper's
pipeline exactly. :func:`train_transform` / :func:`eval_transform` are the same steps for one PIL image.
"""

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.transforms import v2

from allkit.constants import (
    CROP_RATIO,
    FLIP_PROBABILITY,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROTATION_DEGREES,
)
from allkit.data.cache import decode_cell
from allkit.errors import ConfigError


def mean_std(normalize) -> tuple[tuple, tuple] | None:
    """``normalize`` → ``(mean, std)`` or ``None``: ``True`` means ImageNet's statistics, ``False`` none,
    and a ``(mean, std)`` pair (3 numbers each) a backbone's own, e.g. EfficientNet-Lite0's."""
    if normalize is True:
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize is False or normalize is None:
        return None
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalize)
    except (TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        raise ConfigError(
            f"normalize={normalize!r}; expected True (ImageNet), False, or (mean, std) with 3 numbers each, std > 0"
        )
    return mean, std


def to_model_input(batch: torch.Tensor, normalize=True) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` → float32 in [0, 1], then ``(x - mean) / std`` unless ``normalize=False``.
    One fused multiply-add on uint8 input (5-7x faster on a CPU than scaling, then normalising)."""
    stats = mean_std(normalize)
    if batch.dtype != torch.uint8:  # floating input is taken as already in [0, 1]
        x = batch.float()
        return x if stats is None else (x - _column(stats[0], x)) / _column(stats[1], x)
    mean, std = stats or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    scale = 1.0 / (255.0 * torch.tensor(std, device=batch.device))
    shift = -torch.tensor(mean, device=batch.device) / torch.tensor(std, device=batch.device)
    return torch.addcmul(shift.view(3, 1, 1), batch.float(), scale.view(3, 1, 1))


def _column(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1)


def denormalize(batch: torch.Tensor, normalize=True) -> torch.Tensor:
    """Model input → images in [0, 1] for display."""
    stats = mean_std(normalize)
    x = batch.float() if stats is None else batch.float() * _column(stats[1], batch) + _column(stats[0], batch)
    return x.clamp(0.0, 1.0)


class BatchAugment(torch.nn.Module):
    """The paper's random augmentation on a whole batch, drawn independently for every cell: a horizontal
    flip with probability ``p_hflip``, then a vertical flip with ``p_vflip``, then a rotation by an angle
    drawn uniformly in ``[-degrees, degrees]`` (counter-clockwise, about the centre, nearest neighbour,
    black corners) — ``RandomHorizontalFlip → RandomVerticalFlip → RandomRotation``, per sample.

    Draws come from ``generator`` (the global CPU RNG if ``None``), on that generator's device. A uint8
    batch on the CPU is transformed image by image with Pillow, exactly as torchvision transforms the paper's
    PIL images (and faster than batched resampling on a CPU); any other batch (the GPU) is flipped and
    rotated as a whole with ``grid_sample``, without syncing the device."""

    def __init__(self, p_hflip=FLIP_PROBABILITY, p_vflip=FLIP_PROBABILITY, degrees=ROTATION_DEGREES):
        super().__init__()
        if not (0 <= p_hflip <= 1 and 0 <= p_vflip <= 1 and degrees >= 0):
            raise ConfigError(
                f"BatchAugment(p_hflip={p_hflip}, p_vflip={p_vflip}, degrees={degrees}); "
                "expected probabilities in [0, 1] and degrees >= 0"
            )
        self.p_hflip, self.p_vflip, self.degrees = float(p_hflip), float(p_vflip), float(degrees)

    def extra_repr(self) -> str:
        return f"p_hflip={self.p_hflip}, p_vflip={self.p_vflip}, degrees={self.degrees}"

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each cell's random parameters: horizontal flip?, vertical flip?, angle in degrees (drawn in that
        order, on the generator's device: on a GPU the draws never travel through the host)."""
        device = generator.device if generator is not None else "cpu"
        hflip = torch.rand(n, generator=generator, device=device) < self.p_hflip
        vflip = torch.rand(n, generator=generator, device=device) < self.p_vflip
        return hflip, vflip, (torch.rand(n, generator=generator, device=device) * 2 - 1) * self.degrees

    def apply(self, batch: torch.Tensor, hflip, vflip, angle) -> torch.Tensor:
        """The flips and rotations :meth:`draw` chose, applied to ``batch`` [B, C, H, W]."""
        if batch.ndim != 4:
            raise ConfigError(f"BatchAugment expects a batch [B, C, H, W], got shape {tuple(batch.shape)}")
        if batch.device.type == "cpu" and batch.dtype == torch.uint8:
            return _augment_pil(batch, hflip.tolist(), vflip.tolist(), angle.tolist())
        return _augment_tensor(batch, hflip, vflip, angle)

    def forward(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(batch, *self.draw(len(batch), generator))


def _augment_pil(batch: torch.Tensor, hflip: list, vflip: list, angle: list) -> torch.Tensor:
    out = torch.empty(batch.shape[0], *batch.shape[2:], batch.shape[1], dtype=torch.uint8)
    for i, image in enumerate(batch.permute(0, 2, 3, 1).numpy()):
        image = Image.fromarray(image)
        if hflip[i]:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if vflip[i]:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if angle[i]:
            image = image.rotate(angle[i], resample=Image.Resampling.NEAREST, fillcolor=0)
        out[i] = torch.from_numpy(np.array(image))
    return out.permute(0, 3, 1, 2)


def _augment_tensor(batch, hflip, vflip, angle) -> torch.Tensor:
    device, (h, w) = batch.device, batch.shape[-2:]
    x = batch.float()
    x = torch.where(hflip.to(device).view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(vflip.to(device).view(-1, 1, 1, 1), x.flip(-2), x)
    radians = torch.deg2rad(angle.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    # output pixel -> input pixel, in affine_grid's [-1, 1] coordinates (y down): rotate by -angle
    theta = (
        torch.stack([torch.stack([cos, -sin * h / w, 0 * cos], 1), torch.stack([sin * w / h, cos, 0 * cos], 1)], 1)
        .float()
        .to(device)
    )
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    x = nnf.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x.round().clamp(0, 255).to(batch.dtype) if not batch.is_floating_point() else x.to(batch.dtype)


def dihedral(batch: torch.Tensor, view: int) -> torch.Tensor:
    """One of the 8 exact flips and quarter turns of ``batch`` (view 0 is the batch as it is): a cell on a
    slide has no "up", so these are the same cell, with no pixel interpolated."""
    if not 0 <= int(view) < 8:
        raise ConfigError(f"view={view!r}; expected 0-7 (quarter turns 0-3, flipped from 4)")
    turned = torch.rot90(batch, int(view) % 4, dims=(-2, -1))
    return turned.flip(-1) if view >= 4 else turned


def eval_transform(size: int = IMAGE_SIZE, normalize=True, crop_ratio: float = CROP_RATIO) -> v2.Compose:
    """One PIL image → the network's float input: crop, resize, to [0, 1], normalise."""
    return v2.Compose(
        [
            lambda image: decode_cell(image, size, crop_ratio),
            v2.ToImage(),
            v2.Lambda(lambda x: to_model_input(x[None], normalize)[0]),
        ]
    )


def train_transform(size: int = IMAGE_SIZE, normalize=True) -> v2.Compose:
    """The paper's training pipeline for one PIL image, in its order (torchvision's own PIL transforms)."""
    return v2.Compose(
        [
            lambda image: Image.fromarray(decode_cell(image, size)),
            v2.RandomHorizontalFlip(FLIP_PROBABILITY),
            v2.RandomVerticalFlip(FLIP_PROBABILITY),
            v2.RandomRotation(ROTATION_DEGREES),
            v2.ToImage(),
            v2.Lambda(lambda x: to_model_input(x[None], normalize)[0]),
        ]
    )

"""Across people: the training changes chapter 12 compares, for a model that must work on people it has never
seen. A person's cells share a staining batch and a microscope session, so a network can learn the few healthy
donors of its training part (their cells' colour and size) instead of the cells. What may help: colour and stain
variation during training (:class:`StainAugment`), stronger geometric augmentation, gentler fine-tuning (frozen
early layers), class-balanced sampling, and, as a clearly labelled transductive side road, features normalised
within each person (:func:`subject_normalised`).

HED stain jitter uses scikit-image's colour-deconvolution matrices (``skimage.color.hed_from_rgb`` /
``rgb_from_hed``, Ruifrok and Johnston's haematoxylin-eosin-DAB vectors), the same transform as
``skimage.color.rgb2hed`` / ``hed2rgb`` (tested equal), applied to whole batches with torch so that it runs
where the batch is. The perturbation is Tellez et al.'s: each stain's density scaled by ``1 + a`` and shifted
by ``b``, both uniform in ``[-sigma, sigma]`` per cell.
"""

import math

import numpy as np
import pandas as pd
import torch
from skimage.color import hed_from_rgb, rgb_from_hed
from torch import nn

from allkit.errors import ConfigError
from allkit.transforms import BatchAugment

_LOG_ADJUST = math.log(1e-6)  # skimage's floor for optical density
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """``skimage.color.rgb2hed`` on ``[..., 3]`` floats in [0, 1]."""
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    return (od @ torch.as_tensor(hed_from_rgb, dtype=rgb.dtype, device=rgb.device)).clamp_min(0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """``skimage.color.hed2rgb`` on ``[..., 3]`` stain densities."""
    log_rgb = -(hed * -_LOG_ADJUST) @ torch.as_tensor(rgb_from_hed, dtype=hed.dtype, device=hed.device)
    return torch.exp(log_rgb).clamp(0, 1)


class StainAugment(nn.Module):
    """The paper's flips and rotation (or stronger ones), then colour changes another slide, stain batch or
    scanner could bring, each drawn per cell: HED stain jitter (``hed``), brightness, contrast and saturation
    factors in ``[1 - color, 1 + color]``, and grayscale with probability ``grayscale``. Takes a uint8 batch
    ``[B, 3, H, W]``, returns floats in [0, 1] (which :func:`allkit.transforms.to_model_input` accepts)."""

    def __init__(self, geometric: BatchAugment, hed: float = 0.0, color: float = 0.0, grayscale: float = 0.0):
        super().__init__()
        if not (0 <= hed < 1 and 0 <= color < 1 and 0 <= grayscale <= 1):
            raise ConfigError(f"StainAugment(hed={hed}, color={color}, grayscale={grayscale}); expected [0, 1)")
        self.geometric, self.hed, self.color, self.grayscale = geometric, float(hed), float(color), float(grayscale)

    def extra_repr(self) -> str:
        return f"hed={self.hed}, color={self.color}, grayscale={self.grayscale}"

    def forward(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")

        def uniform(*shape, spread=1.0):
            return ((torch.rand(*shape, generator=generator, device=device) * 2 - 1) * spread).to(batch.device)

        x = self.geometric(batch, generator=generator).float().div_(255)  # [B, 3, H, W] in [0, 1]
        n = len(x)
        if self.hed:
            hed = rgb_to_hed(x.permute(0, 2, 3, 1))
            hed = hed * (1 + uniform(n, 1, 1, 3, spread=self.hed)) + uniform(n, 1, 1, 3, spread=self.hed)
            x = hed_to_rgb(hed).permute(0, 3, 1, 2)
        gray = (x * torch.tensor(_GRAY, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.color:
            x = x * (1 + uniform(n, 1, 1, 1, spread=self.color))  # brightness
            mean = gray.mean(dim=(2, 3), keepdim=True)
            x = (x - mean) * (1 + uniform(n, 1, 1, 1, spread=self.color)) + mean  # contrast
            gray = (x * torch.tensor(_GRAY, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = gray + (x - gray) * (1 + uniform(n, 1, 1, 1, spread=self.color))  # saturation
        if self.grayscale:
            to_gray = (torch.rand(n, generator=generator, device=device) < self.grayscale).to(x.device)
            x = torch.where(to_gray.view(-1, 1, 1, 1), gray.expand_as(x), x)
        return x.clamp_(0, 1).contiguous()


def balanced_frame(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Class-balanced sampling: the minority class's cells repeated (a seeded draw) until both classes
    have as many cells, so that every epoch shows the network as many healthy cells as leukaemic ones."""
    counts = frame["label"].value_counts()
    minority = frame[frame["label"] == counts.idxmin()]
    extra = minority.sample(counts.max() - counts.min(), replace=True, random_state=seed)
    return pd.concat([frame, extra], ignore_index=True)


def freeze_early_layers(model: nn.Module, fraction: float) -> int:
    """Stop training the first ``fraction`` of the model's parameter tensors (in the order the network
    runs them, stem first); returns how many parameters stay trainable."""
    params = list(model.parameters())
    for p in params[: int(len(params) * fraction)]:
        p.requires_grad_(False)
    return sum(p.numel() for p in params if p.requires_grad)


def subject_normalised(features: np.ndarray, subjects) -> np.ndarray:
    """Each feature centred and scaled within each person (transductive: it needs all cells of a test
    person at once, and leans on every C-NMC person being of one class)."""
    frame = pd.DataFrame(features)
    groups = frame.groupby(np.asarray(subjects))
    return ((frame - groups.transform("mean")) / (groups.transform("std").fillna(0) + 1e-6)).to_numpy(np.float32)

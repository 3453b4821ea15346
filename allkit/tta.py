"""What the CNN sees at test time: one plain view, the eight exact dihedral views, or random views.

- **Dihedral test-time augmentation** (done right): every cell is also shown flipped and turned by quarter
  turns. These eight views are exact permutations of the pixels (no interpolation, no fill), so the cell
  is unchanged, only its orientation; the prediction is the mean of the eight softmax outputs (or of
  XGBoost's eight probabilities). Deterministic.
- **Random views** reproduce what the authors' public code did at test time: the training augmentation
  (random flips and rotation) applied to the test cells, once, so each score depends on a random draw.
  Seeded here, so the damage can be measured.

One forward pass gives both the pooled features (input of the final linear layer) and the logits, so a
single extraction serves the CNN alone and the hybrid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from allkit.constants import BATCH_SIZE

# (quarter turns, horizontal flip); index 0 is the identity.
DIHEDRAL_VIEWS: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


class FeaturesAndLogits(nn.Module):
    """``model`` -> ``[features | logits]`` in one pass: the final linear layer's input and output."""

    def __init__(self, model: nn.Module, backbone: str):
        from allkit.models import head_module

        super().__init__()
        self.model = model
        self.head = head_module(model, backbone)
        self.training = model.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from allkit.models import main_logits

        captured = {}

        def grab(_module, inputs, _output):
            captured["features"] = inputs[0]

        handle = self.head.register_forward_hook(grab)
        try:
            logits = main_logits(self.model(x))
        finally:
            handle.remove()
        return torch.cat([captured["features"].flatten(1), logits.flatten(1)], dim=1)


class DihedralView(nn.Module):
    """``module`` applied to one dihedral view of its (normalised) input."""

    def __init__(self, module: nn.Module, quarter_turns: int, flip: bool):
        super().__init__()
        self.module = module
        self.quarter_turns = int(quarter_turns) % 4
        self.flip = bool(flip)
        self.training = module.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(-1)
        if self.quarter_turns:
            x = torch.rot90(x, self.quarter_turns, dims=(-2, -1))
        return self.module(x)


class RandomViews(torch.utils.data.Dataset):
    """``dataset`` with the training augmentation applied to every batch, reproducibly: the draws of a
    batch depend only on ``seed`` and the batch's first index (what the authors' test loader did, seeded)."""

    def __init__(self, dataset, seed: int, augment: nn.Module | None = None):
        from allkit.transforms import BatchAugment

        self.dataset = dataset
        self.seed = int(seed)
        self.augment = augment if augment is not None else BatchAugment()
        self.frame = getattr(dataset, "frame", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        images, labels = self.dataset.__getitems__(indices)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(np.asarray(indices)[0]))
        return self.augment(images, generator=generator), labels

    def __getitem__(self, index: int):
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


def extract(model: nn.Module, backbone: str, dataset, *, normalize, view: int | None = None,
            random_seed: int | None = None, batch_size: int = BATCH_SIZE, device="auto",
            progress: bool = False) -> np.ndarray:
    """``[features | logits]`` of every cell, float32 ``(N, D + K)``, in dataset order.

    ``view``: index into :data:`DIHEDRAL_VIEWS` (``None`` or 0: the cell as it is). ``random_seed``: show
    the cells through :class:`RandomViews` instead (the authors' test-time augmentation).
    """
    from allkit.hybrid import _run, _without_augmentation

    module: nn.Module = FeaturesAndLogits(model, backbone)
    if view:
        turns, flip = DIHEDRAL_VIEWS[view]
        module = DihedralView(module, turns, flip)
    data = _without_augmentation(dataset)
    if random_seed is not None:
        data = RandomViews(data, random_seed)
    desc = "random views" if random_seed is not None else f"view {view or 0}"
    return _run(module, data, batch_size=batch_size, device=device, normalize=normalize, progress=progress, desc=desc)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, returned as float32."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

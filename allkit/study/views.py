"""What the CNN sees at test time, beyond the core's eight exact dihedral views
(:func:`allkit.transforms.dihedral`, ``allkit.inference.predict(..., view=v)``):

- **Random views** reproduce what the authors' public code did at test time: the training augmentation
  (random flips and rotation) applied to the test cells, once, so each score depends on a random draw.
  Seeded here, so the damage can be measured.
- **Features and logits in one pass**: the pooled features (input of the final linear layer) and the
  head's output side by side, so a single extraction serves the CNN alone and the hybrid.
"""

import numpy as np
import torch
from torch import nn

from allkit.data import CellDataset
from allkit.inference import predict
from allkit.models import PooledFeatures, head
from allkit.transforms import BatchAugment


class FeaturesAndLogits(nn.Module):
    """``model`` -> ``[features | logits]``: the head's input (:class:`allkit.models.PooledFeatures`) and the
    head applied to it, which in eval mode (dropout off) is the model's output."""

    def __init__(self, model: nn.Module, backbone):
        super().__init__()
        self.pooled = PooledFeatures(model, backbone)
        self.head = head(model, backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pooled(x).flatten(1)
        return torch.cat([features, self.head(features)], dim=1)


class RandomViews(torch.utils.data.Dataset):
    """``dataset`` with the training augmentation applied to every batch, reproducibly: the draws of a
    batch depend only on ``seed`` and the batch's first index (what the authors' test loader did, seeded)."""

    def __init__(self, dataset: CellDataset, seed: int, augment: nn.Module | None = None):
        self.dataset = dataset
        self.seed = int(seed)
        self.augment = augment if augment is not None else BatchAugment()
        self.frame = dataset.frame

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        images, labels = self.dataset.__getitems__(indices)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(np.asarray(indices)[0]))
        return self.augment(images, generator=generator), labels

    def __getitem__(self, index: int):
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


def features_and_logits(
    model: nn.Module, backbone, dataset: CellDataset, *, view: int = 0, random_seed: int | None = None, **kwargs
) -> np.ndarray:
    """``[features | logits]`` of every cell, float32 ``(N, D + K)``, in dataset order: dihedral ``view``
    (0: the cell as it is), or with ``random_seed`` the cells through :class:`RandomViews` (the authors'
    test-time augmentation). ``kwargs`` go to :func:`allkit.inference.predict`."""
    data = dataset if random_seed is None else RandomViews(dataset, random_seed)
    desc = "random views" if random_seed is not None else f"view {view}"
    return predict(FeaturesAndLogits(model, backbone), data, view=view, desc=desc, **kwargs)

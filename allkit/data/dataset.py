"""Cached cells as a torch ``Dataset`` whose batches are read from the memory map in one go."""

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from allkit.constants import BATCH_SIZE
from allkit.data.cache import CellCache


class CellDataset(Dataset):
    """The cells of ``frame`` (default: all cached cells) as ``(uint8 tensor [3, H, W], label)``.

    ``__getitems__`` reads a whole batch with one indexing of the memory map, which is what makes an
    epoch over the cache fast; augmentation and normalisation happen on the batch afterwards."""

    def __init__(self, cache: CellCache, frame: pd.DataFrame | None = None):
        self.cache = cache
        self.frame = (cache.frame if frame is None else frame).reset_index(drop=True)
        self.rows = cache.rows(self.frame)
        self.labels = torch.tensor(self.frame["label"].to_numpy(), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        pixels = np.require(self.cache.images[self.rows[indices]], requirements=["C", "W"])  # writable memory
        return torch.from_numpy(pixels).permute(0, 3, 1, 2), self.labels[torch.tensor(indices)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


def make_loader(
    dataset: CellDataset,
    *,
    batch_size: int = BATCH_SIZE,
    shuffle: bool = False,
    seed: int = 0,
    device: torch.device | None = None,
) -> DataLoader:
    """Batches of ``dataset`` (shuffled by ``seed`` if asked), read in this process: reading the cache is
    a copy, not a decode, and worker processes measured several times slower than none."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=lambda batch: batch,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device is not None and device.type == "cuda",
    )

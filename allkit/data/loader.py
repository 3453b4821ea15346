"""Torch ``Dataset`` over the uint8 cache, and a ``DataLoader`` factory with sensible defaults."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from allkit.constants import BATCH_SIZE, SEED
from allkit.data.cache import CellCache


class CellDataset(Dataset):
    """Cells of ``frame`` (default: the whole cache) as ``(uint8 tensor 3xHxW, label)``.

    Batches are read from the memory map in one indexing operation (``__getitems__``), which is
    what makes an epoch over the cache fast; ``transform`` (per sample, on uint8 CHW) is optional —
    the trainer augments whole batches on the device instead.
    """

    def __init__(self, cache: CellCache, frame: pd.DataFrame | None = None, transform=None):
        self.cache = cache
        self.frame = (cache.frame if frame is None else frame).reset_index(drop=True)
        self.rows = cache.rows(frame)
        self.labels = torch.tensor(self.frame["label"].to_numpy(), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self, rows) -> torch.Tensor:
        # A single row of the read-only memory map is a view: copy it so torch gets writable memory.
        array = np.require(self.cache.images[rows], requirements=["C", "W"])
        return torch.from_numpy(array).movedim(-1, -3)  # NHWC -> NCHW

    def __getitem__(self, index: int):
        image = self._pixels(self.rows[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def __getitems__(self, indices):
        indices = np.asarray(indices)
        images = self._pixels(self.rows[indices])
        if self.transform is not None:
            images = torch.stack([self.transform(img) for img in images])
        return images, self.labels[torch.from_numpy(np.array(indices, dtype=np.int64))]


def _already_batched(batch):
    return batch


def default_num_workers(device: torch.device | str | None = None) -> int:
    # Reading the memory map is a copy, not a decode: extra processes only add IPC on CPU. On a GPU
    # machine two workers keep the copy overlapped with the device's work.
    if torch.device(device or "cpu").type == "cuda":
        return min(2, os.cpu_count() or 1)
    return 0


def make_loader(
    dataset: CellDataset,
    *,
    batch_size: int = BATCH_SIZE,
    shuffle: bool = False,
    seed: int = SEED,
    device: torch.device | str | None = None,
    num_workers: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A seeded ``DataLoader``: shuffling order depends only on ``seed``; ``pin_memory`` on CUDA."""
    generator = torch.Generator().manual_seed(seed)
    workers = default_num_workers(device) if num_workers is None else num_workers
    is_cuda = torch.device(device or "cpu").type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        pin_memory=is_cuda,
        drop_last=drop_last,
        collate_fn=_already_batched,
        persistent_workers=workers > 0,
    )

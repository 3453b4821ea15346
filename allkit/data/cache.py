"""Decode each cell once: a uint8 memory-mapped cache of the deterministic preprocessing.

Centre crop (448 of 450) and resize (224) never change between epochs, so they are done once and
stored as an ``(N, size, size, 3)`` uint8 ``.npy`` opened with ``mmap_mode="r"``: later epochs,
notebooks and feature extraction read pixels from the page cache instead of decoding PNG/BMP again,
and a 10,661-cell cache (1.6 GB) does not have to fit in Colab's RAM. Random augmentation runs after.

The cache is keyed by the file list (path, size, modification time) and the preprocessing
parameters, and written atomically: an interrupted build leaves no cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from allkit.atomic import write_json
from allkit.constants import CROP_SIZE, IMAGE_SIZE, ORIGINAL_SIZE
from allkit.data.discover import COLUMNS, BadFile
from allkit.data.paths import cache_dir as default_cache_dir
from allkit.errors import DataError

CACHE_VERSION = 1
DEFAULT_CROP_RATIO = CROP_SIZE / ORIGINAL_SIZE


@dataclass
class CellCache:
    """Cells decoded and preprocessed once. ``frame`` lists the cached cells in row order."""

    path: Path
    frame: pd.DataFrame
    size: int
    crop_ratio: float
    bad_files: list[BadFile] = field(default_factory=list)
    _images: np.ndarray | None = field(default=None, repr=False)

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.frame)

    def __getstate__(self):
        # Worker processes reopen the memory map instead of receiving a copy of the pixels.
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def rows(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """Row numbers in the cache of the cells in ``frame`` (all cells when ``None``)."""
        if frame is None:
            return self.frame["row"].to_numpy()
        index = pd.Series(self.frame["row"].to_numpy(), index=self.frame["path"].to_numpy())
        missing = ~frame["path"].isin(index.index)
        if missing.any():
            first = frame.loc[missing, "path"].iloc[0]
            raise DataError(f"{int(missing.sum())} cell(s) are not in the cache {self.path} (e.g. {first}); "
                            "build the cache from a frame that contains them")
        return index.loc[frame["path"].to_numpy()].to_numpy()

    def get(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """The cached pixels of ``frame``'s cells as an in-memory ``(n, size, size, 3)`` uint8 array."""
        return np.asarray(self.images[self.rows(frame)])


def cache_key(frame: pd.DataFrame, size: int, crop_ratio: float) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{crop_ratio:.6f}".encode())
    for path in frame["path"]:
        stat = os.stat(path)
        digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _decode(path: str, size: int, crop_ratio: float) -> np.ndarray:
    from allkit.transforms import decode_for_cache

    with Image.open(path) as image:
        image.load()
        return decode_for_cache(image, size=size, crop_ratio=crop_ratio)


def _load_existing(npy: Path, meta: Path, frame: pd.DataFrame, size: int) -> CellCache | None:
    if not (npy.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None  # a damaged cache is rebuilt, never trusted
    if images.shape != (len(frame), size, size, 3) or info.get("version") != CACHE_VERSION:
        return None
    cached = frame.reset_index(drop=True).assign(row=np.arange(len(frame)))
    bad = [BadFile(**b) for b in info["bad_files"]]
    bad_paths = {b.path for b in bad}
    cached = cached[~cached["path"].isin(bad_paths)].reset_index(drop=True)
    return CellCache(npy, cached, size, info["crop_ratio"], bad, images)


def build_cache(
    frame: pd.DataFrame,
    *,
    size: int = IMAGE_SIZE,
    crop_ratio: float = DEFAULT_CROP_RATIO,
    cache_dir: str | Path | None = None,
    on_error: str = "raise",
    workers: int | None = None,
    progress: bool = True,
) -> CellCache:
    """Decode ``frame``'s images once (or reuse a matching cache) and return the memory-mapped cache.

    ``on_error="raise"`` stops at the first image that cannot be decoded, naming it; ``"skip"`` leaves
    such images out of ``CellCache.frame`` and lists them in ``bad_files``.
    """
    if on_error not in {"raise", "skip"}:
        raise ValueError(f"on_error={on_error!r}; expected 'raise' or 'skip'")
    if len(frame) == 0:
        raise DataError("cannot build a cache of zero cells; the frame is empty")
    frame = frame[[c for c in COLUMNS if c in frame.columns]].reset_index(drop=True)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(frame, size, crop_ratio)
    npy, meta = folder / f"cells-{size}-{key}.npy", folder / f"cells-{size}-{key}.json"
    existing = _load_existing(npy, meta, frame, size)
    if existing is not None:
        return existing

    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=npy.stem, suffix=".npy.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    bad: list[BadFile] = []
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(frame), size, size, 3))

        def work(i: int, images=images) -> tuple[int, str | None]:
            try:
                images[i] = _decode(frame.at[i, "path"], size, crop_ratio)
                return i, None
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
                return i, f"cannot decode image: {exc}"

        threads = workers or min(8, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=threads)
        try:
            results = pool.map(work, range(len(frame)))
            for i, problem in tqdm(results, total=len(frame), desc="Caching cells", unit="img",
                                   disable=not progress):
                if problem is None:
                    continue
                if on_error == "raise":
                    raise DataError(f"{frame.at[i, 'path']}: {problem}. Pass on_error='skip' to leave it out")
                bad.append(BadFile(frame.at[i, "path"], problem))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        images.flush()
        del images
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_json(meta, {"version": CACHE_VERSION, "size": size, "crop_ratio": crop_ratio,
                        "n": len(frame), "bad_files": [b.to_dict() for b in bad]})
    loaded = _load_existing(npy, meta, frame, size)
    assert loaded is not None
    return loaded

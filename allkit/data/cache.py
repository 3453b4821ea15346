"""Decode each cell once: the paper's fixed preprocessing, stored as a uint8 memory map.

Centre crop (448 of 450 px) and resize (224) never change between epochs, so every cell is decoded and
cropped once into an ``(N, size, size, 3)`` uint8 ``.npy`` read with ``mmap_mode="r"``: later epochs,
chapters and feature extraction read pixels from the page cache instead of decoding BMPs again, and the
10,661 training cells (1.6 GB) need not fit in Colab's RAM. Random augmentation comes after.

The cache lives in ``ALLKIT_CACHE`` (else the platform's cache folder), is named by a hash of the file
list (path, size, modification and change time, inode) and the preprocessing, and is written to a temp
file renamed into place, so an interrupted build never leaves a cache that looks complete.

Each cell also gets a *pixel digest* (a hash of its decoded full-size RGB pixels): the release files some
identical pictures under two people, sometimes in two containers (a PNG here, a WebP there), and only the
pixels say they are one cell. :func:`pixel_digests` remembers them per file, so splits can keep such people
together (:mod:`allkit.data.splits`).
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import platformdirs
from PIL import Image
from torchvision.transforms.v2 import functional as F
from tqdm.auto import tqdm

from allkit.constants import (
    CROP_RATIO,
    IMAGE_SIZE,
    MAX_CELL_ASPECT,
    MAX_CELL_PIXELS,
    MAX_INPUT_SIZE,
    MIN_CELL_SIDE,
    ORIGINAL_SIZE,
)
from allkit.errors import ConfigError, DataError
from allkit.files import current_umask, sweep_stale, write_json

VERSION = 4  # 4: copies found by pixel digests (pixel_digests), no longer by the files' sha1 kept with the cache


def cache_dir() -> Path:
    """``ALLKIT_CACHE``, else the platform's user cache folder (``~/.cache/allkit`` on Linux)."""
    return Path(os.environ.get("ALLKIT_CACHE") or platformdirs.user_cache_dir("allkit")).expanduser()


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit grayscale is scaled 65535 → 255 (Pillow's own conversion clips it to white)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"a {image.mode!r} image has values outside [0, 65535]; expected 16-bit pixels")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise DataError("a 32-bit float image has no defined intensity range; expected 8- or 16-bit pixels")
    return image if image.mode == "RGB" else image.convert("RGB")


def check_preprocessing(size, crop_ratio: float) -> None:
    """``size`` (pixels a side) and ``crop_ratio`` checked where they are read, before any allocation."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_INPUT_SIZE:
        raise ConfigError(f"size={size!r}; expected a whole number of pixels from 1 to {MAX_INPUT_SIZE}")
    if not isinstance(crop_ratio, (int, float, np.floating)) or not 0 < crop_ratio <= 1:
        raise ConfigError(f"crop_ratio={crop_ratio!r}; expected a fraction in (0, 1]")


@contextlib.contextmanager
def open_cell(source, name=None):
    """``Image.open`` for a cell file (a path or a file object; ``name`` for messages), refusing what is no cell
    before it is decoded: fewer than 64 pixels a side, longer than 2:1, more than 4096x4096 pixels (the release's
    cells are 450x450). Pillow's own decompression-bomb warning, far above that limit, is not shown."""
    name = name or source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{name}: not a readable image ({err})") from None
    with image:
        width, height = image.size
        if (
            width * height > MAX_CELL_PIXELS
            or min(width, height) < MIN_CELL_SIDE
            or max(width, height) > MAX_CELL_ASPECT * min(width, height)
        ):
            raise DataError(
                f"{name}: {width}x{height} pixels is not a cell image (C-NMC cells are {ORIGINAL_SIZE}x{ORIGINAL_SIZE}; "
                f"expected at least {MIN_CELL_SIDE} a side, at most {MAX_CELL_ASPECT:g}:1 and {MAX_CELL_PIXELS:,} pixels)"
            )
        yield image


def pixel_digest(image: Image.Image) -> str:
    """A hash of the picture itself (size and 8-bit RGB pixels), whatever the container: a BMP, a PNG and a
    lossless WebP of one cell have one digest."""
    rgb = to_rgb(image)
    return hashlib.sha1(f"{rgb.size[0]}x{rgb.size[1]}|".encode() + rgb.tobytes()).hexdigest()


def read_cell(path, size: int = IMAGE_SIZE, crop_ratio: float = CROP_RATIO) -> np.ndarray:
    """A cell file → its decoded pixels (:func:`decode_cell`), opened with :func:`open_cell`'s checks (a file that
    is not there is the OSError it is)."""
    with open(path, "rb") as handle:
        payload = handle.read()
    with open_cell(io.BytesIO(payload), path) as image:
        try:
            image.load()
            return decode_cell(image, size, crop_ratio)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # Pillow's many ways to fail
            raise DataError(f"{path}: not a readable image ({err})") from err


def _file_key(path) -> str:
    st = os.stat(path)  # the real path: a file reached through a link is not decoded twice
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def pixel_digests(
    paths, *, progress: bool = True, folder=None, errors: list | None = None, refresh: bool = False
) -> dict[str, str]:
    """``{path: pixel digest}`` for every file in ``paths``: remembered in the cache folder by path, size and
    modification time, so each file is decoded for it once (about 3 ms a cell here). An unreadable file is a
    :class:`DataError` naming it; with ``errors`` (a list) it is appended there as ``{"path", "reason"}`` and
    left out instead. ``refresh`` decodes every file again (``allkit data check``, which vouches for them)."""
    paths = [str(p) for p in paths]
    index = (Path(folder) if folder is not None else cache_dir()) / f"pixel-digests-v{VERSION}.json"
    try:
        known = json.loads(index.read_text()) if index.is_file() else {}
    except (OSError, ValueError):
        known = {}  # damaged: computed again, never trusted
    try:
        keys = {path: _file_key(path) for path in paths}
    except OSError as err:
        raise DataError(f"cannot read {err.filename}: {err.strerror}") from None
    todo = paths if refresh else [path for path in paths if keys[path] not in known]
    if todo:

        def digest(path: str) -> tuple[str | None, str | None]:
            try:
                with open_cell(path) as image:
                    return pixel_digest(image), None
            except (OSError, SyntaxError, ValueError, DataError) as err:
                reason = str(err) if isinstance(err, DataError) else f"{path}: not a readable image ({err})"
                return None, reason

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            done = tqdm(pool.map(digest, todo), total=len(todo), desc="Decoding", unit="img", disable=not progress)
            for path, (value, reason) in zip(todo, done, strict=True):
                if reason is None:
                    known[keys[path]] = value
                    continue
                known.pop(keys[path], None)
                if errors is None:
                    raise DataError(f"{reason}; remove or replace the file")
                errors.append({"path": path, "reason": reason})
        index.parent.mkdir(parents=True, exist_ok=True)
        write_json(index, known, indent=None)
    return {path: known[keys[path]] for path in paths if keys[path] in known}


def decode_cell(image, size: int = IMAGE_SIZE, crop_ratio: float = CROP_RATIO) -> np.ndarray:
    """One cell (a PIL image or a path) → uint8 ``(size, size, 3)``: RGB, square centre crop of
    ``crop_ratio`` × the shorter side (448/450: the paper's CenterCrop(448)), bilinear resize to ``size``."""
    check_preprocessing(size, crop_ratio)
    if not isinstance(image, Image.Image):
        return read_cell(image, size, crop_ratio)
    image = to_rgb(image)
    shorter = min(image.size)
    image = F.center_crop(image, [max(1, min(shorter, round(crop_ratio * shorter)))] * 2)
    return np.array(F.resize(image, [int(size)] * 2, antialias=True))


@dataclass
class CellCache:
    """Decoded cells. ``frame`` lists them in row order; ``images`` is the ``(N, size, size, 3)`` memory map."""

    path: Path
    frame: pd.DataFrame
    size: int
    crop_ratio: float

    @property
    def images(self) -> np.ndarray:
        if "_images" not in self.__dict__:
            self._images = np.load(self.path, mmap_mode="r")
        return self._images

    def __getstate__(self):  # DataLoader workers reopen the memory map instead of copying the pixels
        return {k: v for k, v in self.__dict__.items() if k != "_images"}

    def __len__(self) -> int:
        return len(self.frame)

    def rows(self, frame: pd.DataFrame) -> np.ndarray:
        """Row numbers of ``frame``'s cells in the cache."""
        index = pd.Series(np.arange(len(self.frame)), index=self.frame["path"].to_numpy())
        missing = ~frame["path"].isin(index.index)
        if missing.any():
            raise DataError(
                f"{int(missing.sum())} cell(s) are not in the cache {self.path} (e.g. "
                f"{frame.loc[missing, 'path'].iloc[0]}); build the cache from a frame holding them"
            )
        return index.loc[frame["path"].to_numpy()].to_numpy()


def _key(frame: pd.DataFrame, size: int, crop_ratio: float) -> str:
    digest = hashlib.sha256(f"v{VERSION}|{size}|{crop_ratio:.6f}".encode())
    for path in frame["path"]:
        st = os.stat(path)
        digest.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}".encode())
    return digest.hexdigest()[:20]


def build_cache(
    frame: pd.DataFrame, *, size: int = IMAGE_SIZE, crop_ratio: float = CROP_RATIO, folder=None, progress: bool = True
) -> CellCache:
    """Decode ``frame``'s cells once (or reuse the matching cache) and return the memory-mapped cache.
    An image that cannot be decoded stops the build with a :class:`DataError` naming it."""
    if len(frame) == 0:
        raise DataError("cannot cache zero cells: the frame is empty")
    frame = frame.reset_index(drop=True)
    check_preprocessing(size, crop_ratio)
    folder = Path(folder) if folder is not None else cache_dir() / "cells"
    try:
        key = _key(frame, size, crop_ratio)
    except OSError as err:
        raise DataError(f"cannot read {err.filename}: {err.strerror}") from None
    npy = folder / f"cells-{size}-{key}.npy"
    if npy.is_file():
        try:
            if np.load(npy, mmap_mode="r").shape == (len(frame), size, size, 3):
                return CellCache(npy, frame, size, crop_ratio)
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt, never trusted
    folder.mkdir(parents=True, exist_ok=True)
    needed = len(frame) * size * size * 3 + 4096
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DataError(
            f"{folder} has {free / 2**20:.0f} MiB free; caching {len(frame)} cells at {size} px "
            f"needs {needed / 2**20:.0f} MiB. Free some space or set ALLKIT_CACHE elsewhere"
        )
    for name in {stale.name.split(".")[1] for stale in folder.glob(".cells-*.tmp")}:  # killed builds, any cells
        sweep_stale(folder, name)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{npy.stem}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # not mkstemp's 0600: like every file allkit writes
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(frame), size, size, 3))
        if hasattr(os, "posix_fallocate"):  # claim the disk now: a full disk is an OSError here, not a SIGBUS later
            with open(tmp, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.path.getsize(tmp))

        def decode(i: int, images=images) -> str | None:
            try:
                images[i] = read_cell(frame.at[i, "path"], size, crop_ratio)
            except (OSError, DataError) as err:
                return str(err)
            return None

        pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        try:
            for problem in tqdm(
                pool.map(decode, range(len(frame))),
                total=len(frame),
                desc="Caching cells",
                unit="img",
                disable=not progress,
            ):
                if problem:
                    raise DataError(f"{problem}; remove or replace the file")
        finally:
            pool.shutdown(cancel_futures=True)
        images.flush()
        del images
        os.replace(tmp, npy)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return CellCache(npy, frame, size, crop_ratio)

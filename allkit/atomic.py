"""Write files so that a reader never sees half of one: a temp file in the same folder, then os.replace."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``path``; on success it is flushed, synced and renamed onto ``path``,
    on any error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, payload, *, default: Callable | None = None, indent: int | None = None):
    with atomic_file(path, "w") as handle:
        json.dump(payload, handle, indent=indent, default=default)


def torch_save(payload, path: str | os.PathLike) -> None:
    import torch

    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)

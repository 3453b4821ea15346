"""Files: written so that a reader never sees half of one (a temp file in the same folder, then os.replace),
read back and fingerprinted with errors that name them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``path``; on success it is flushed, synced and renamed onto ``path``,
    on any error it is removed and ``path`` is left as it was. The file gets the permissions of any new
    file (0666 minus the umask), not mkstemp's 0600: models and figures are meant to be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
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


def read_json(path: str | os.PathLike, error: type[Exception], hint: str = ""):
    """The JSON document in ``path``; ``error`` naming the file (and ``hint``, e.g. what to do) when it cannot
    be read or parsed, instead of a bare ``JSONDecodeError``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err}){hint}") from err


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

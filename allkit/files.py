"""Files written so that nobody ever reads half of one, and read back with errors that name them."""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """Write to a temp file beside ``path``; on success it is synced and renamed onto ``path``, on any
    error removed, so ``path`` holds either the old or the new content. New files get the usual
    permissions (0666 minus the umask), not mkstemp's 0600: models and figures are meant to be shared."""
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


def save_torch(payload, path) -> None:
    """``torch.save`` through :func:`atomic_file`. torch reports a full disk as a ``RuntimeError`` ("enforce
    fail at inline_container.cc ..."); it is re-raised as the ``OSError`` it is, naming the file."""
    try:
        with atomic_file(path) as handle:
            torch.save(payload, handle)
    except RuntimeError as err:
        free = shutil.disk_usage(Path(path).parent).free / 2**20
        raise OSError(
            errno.EIO, f"cannot write {path} ({free:.0f} MiB free there): {str(err).splitlines()[0]}"
        ) from err


def write_json(path, payload, *, default=None, indent: int | None = 2) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(payload, handle, indent=indent, default=default)


def read_json(path, error: type[Exception], hint: str = ""):
    """The JSON document in ``path``, or ``error`` naming the file (plus ``hint``) if it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path} is not readable JSON ({err}){hint}") from err


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a new folder beside ``path`` to fill; on success it replaces ``path`` (an old folder there is
    moved aside first and put back if the rename fails), on any error it is removed and ``path`` is left
    as it was."""
    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = target.parent / f".{target.name}.old-{os.getpid()}" if target.exists() else None
        if old is not None:
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Files written so that nobody ever reads half of one, and read back with errors that name them."""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from allkit.errors import AllkitError


def current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def sweep_stale(folder, name: str) -> list[Path]:
    """Remove what a killed writer of ``name`` left in ``folder``: the temp files and staging folders named
    ``.NAME.<pid>.<8 random characters>[.tmp]`` or ``.NAME.old-<pid>`` (see :func:`atomic_file`,
    :func:`atomic_folder`) whose process is gone. Another live process's work is never touched, nor what another
    name left (``.NAME.5.<pid>.…`` is the staging folder of ``NAME.5``). Returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:old-(\d+)|(\d+)\.[a-z0-9_]{{8}}(?:\.tmp)?)$")
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        pid = int(match[1] or match[2]) if match else None
        if pid is not None and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """Write to a temp file beside ``path``; on success it is synced and renamed onto ``path``, on any
    error removed, so ``path`` holds either the old or the new content. New files get the usual
    permissions (0666 minus the umask), not mkstemp's 0600: models and figures are meant to be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
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
    sweep_stale(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
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


def refuse_overlap(out, inputs: dict[str, object]) -> None:
    """Refuse an output path that is one of ``inputs`` (what the command reads: name → path, ``None`` skipped),
    lies inside one, or holds one: replacing it would destroy what is being read."""
    target = Path(out).expanduser().resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(path).expanduser().resolve()
        if target == source or source in target.parents or target in source.parents:
            where = "is" if target == source else "is inside" if source in target.parents else "holds"
            raise AllkitError(
                f"the output {out} {where} {name} {path}, which this command reads; choose an output outside it"
            )

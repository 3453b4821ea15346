"""Get C-NMC 2019: kagglehub where there is a network, clear manual steps where there is not."""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

try:  # an optional extra: pip install "allkit[download]"
    import kagglehub
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    kagglehub = None

from allkit.data import load_cnmc
from allkit.errors import DataError
from allkit.files import sweep_stale

KAGGLE_HANDLE = "andrewmvd/leukemia-classification"
MANUAL_STEPS = """\
To get C-NMC 2019 by hand:
  1. Kaggle: https://www.kaggle.com/datasets/andrewmvd/leukemia-classification -> Download (about 0.9 GB zip),
     or TCIA: https://doi.org/10.7937/tcia.2019.dc64i46r (CC BY 3.0).
  2. Unpack it so that {dest}/C-NMC_Leukemia/training_data/fold_0/all/ exists
     (allkit data extract ARCHIVE --dest {dest} unpacks safely).
  3. Point allkit at it: export ALLKIT_DATA={dest}  (or pass --data {dest}).
With kagglehub, set KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json) first."""


def _inside(base: Path, target: Path) -> bool:
    base, target = base.resolve(), target.resolve()
    return target == base or base in target.parents


def _escapes(dest: Path, name: str) -> bool:
    """A member name that is absolute, climbs with ``..`` (even back into ``dest``), or lands outside ``dest``."""
    return Path(name).is_absolute() or ".." in Path(name).parts or not _inside(dest, dest / name)


_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_S_IFLNK, _CHUNK = 0o120000, 1 << 20


def _zip_entries(zf: zipfile.ZipFile):
    """``(name, kind, stated size, problem)`` of each zip member; kind is file, dir or link."""
    for info in zf.infolist():
        link = (info.external_attr >> 16) & 0o170000 == _S_IFLNK
        problem = (
            "is encrypted; expected the unencrypted Kaggle/TCIA download"
            if info.flag_bits & 0x1
            else f"uses compression method {info.compress_type}, which Python cannot unpack; unpack it with another "
            "tool, or download the archive again"
            if info.compress_type not in _ZIP_METHODS
            else None
        )
        yield info.filename, "link" if link else "dir" if info.is_dir() else "file", info.file_size, problem


def _tar_entries(tf: tarfile.TarFile):
    """As :func:`_zip_entries`, for a tar archive (reading its index reads it whole: a truncated one fails)."""
    for info in tf.getmembers():
        kind = "file" if info.isfile() else "dir" if info.isdir() else "link"  # links and special files alike
        yield info.name, kind, info.size, None


def _members(archive: Path, entries, dest: Path) -> list[tuple[str, int]]:
    """``(name, stated size)`` of each file member, every member checked before anything is written."""
    members = []
    for name, kind, size, problem in entries:
        where = f"{archive}: member {name!r}"
        if _escapes(dest, name):
            raise DataError(f"{where} would be written outside {dest}; refused")
        if kind == "link":
            raise DataError(f"{where} is a link or a special file; refused (C-NMC holds only images and a CSV)")
        if problem:
            raise DataError(f"{where} {problem}")
        if kind == "file":
            members.append((name, size))
    return members


def safe_extract(archive: str | Path, dest: str | Path, *, progress: bool = True) -> Path:
    """Unpack a .zip or .tar(.gz) into ``dest``, all or nothing. Refused before anything is written: absolute
    paths, ``..`` escapes, links, encrypted or unsupported members, and a total unpacked size larger than the
    free space. A damaged member (bad CRC, truncated archive) is one :class:`DataError` naming the archive and
    the member. Members are unpacked into a staging folder inside ``dest`` and moved into place only when all
    are complete; an entry already in ``dest`` is never replaced."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"archive {str(archive)!r} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest, "extract")
    try:
        if zipfile.is_zipfile(archive):
            opened = zipfile.ZipFile(archive)
            members = _members(archive, _zip_entries(opened), dest)
        elif tarfile.is_tarfile(archive):
            opened = tarfile.open(archive)
            members = _members(archive, _tar_entries(opened), dest)
        else:
            raise DataError(f"{archive}: not a zip or tar archive; expected the Kaggle/TCIA download")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: damaged or truncated archive ({err}); download it again") from None
    with opened:
        needed, free = sum(size for _, size in members), shutil.disk_usage(dest).free
        if needed > free:
            raise DataError(
                f"{archive} unpacks to {needed / 2**30:.2f} GiB but {dest} has {free / 2**30:.2f} GiB free; free "
                "some space or choose another --dest"
            )
        top = sorted({Path(name).parts[0] for name, _ in members if Path(name).parts})
        taken = [name for name in top if (dest / name).exists()]
        if taken:
            raise DataError(f"{dest / taken[0]} already exists; remove it or choose another --dest")
        staging = Path(tempfile.mkdtemp(prefix=f".extract.{os.getpid()}.", dir=dest))
        try:
            bar = tqdm(
                total=needed,
                unit="B",
                unit_scale=True,
                desc=f"Unpacking {archive.name}",
                disable=not progress,
                leave=False,
            )
            with bar:
                for name, size in members:
                    where = f"{archive}: member {name!r}"
                    try:
                        if isinstance(opened, zipfile.ZipFile):
                            (staging / name).parent.mkdir(parents=True, exist_ok=True)
                            # zipfile reads at most the stated size and then checks the CRC: a member that would
                            # inflate past it (a zip bomb, a damaged header) ends as BadZipFile, not a full disk
                            with opened.open(name) as source, open(staging / name, "wb") as target:
                                shutil.copyfileobj(source, target, _CHUNK)
                        else:
                            opened.extract(name, staging, filter="data")
                    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
                        raise DataError(f"{where} is damaged ({err}); download the archive again") from None
                    except OSError as err:
                        raise DataError(f"{where} could not be written to {dest} ({err.strerror or err})") from None
                    bar.update(size)
            for name in top:
                os.rename(staging / name, dest / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def download_cnmc(dest: str | Path = "data", *, force: bool = False) -> Path:
    """C-NMC 2019 from Kaggle, and the folder that holds ``C-NMC_Leukemia/``: ``dest`` if it already does,
    else kagglehub's own download folder (the extracted tree is used where kagglehub put it: no second
    copy), or ``dest`` when kagglehub delivered an archive, which is then extracted there once."""
    dest = Path(dest).expanduser()
    if not force:
        try:
            load_cnmc(dest)
            return dest
        except DataError:
            pass
    if kagglehub is None:
        raise DataError(
            'kagglehub is not installed: pip install "allkit[download]".\n' + MANUAL_STEPS.format(dest=dest)
        )
    try:
        fetched = Path(kagglehub.dataset_download(KAGGLE_HANDLE, force_download=force))
    except Exception as exc:  # network, credentials, quota: all end in the same manual route
        raise DataError(
            f"download of {KAGGLE_HANDLE} failed ({type(exc).__name__}: {exc}).\n" + MANUAL_STEPS.format(dest=dest)
        ) from None
    archives = [p for p in fetched.rglob("*") if p.suffix in {".zip", ".tar", ".gz", ".tgz"}]
    for archive in archives:
        safe_extract(archive, dest)
    found = dest if archives else fetched
    load_cnmc(found)  # what arrived is a readable C-NMC tree
    return found

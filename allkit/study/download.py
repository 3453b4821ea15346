"""Get C-NMC 2019: kagglehub where there is a network, clear manual steps where there is not."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

try:  # an optional extra: pip install "allkit[download]"
    import kagglehub
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    kagglehub = None

from allkit.data import load_cnmc
from allkit.errors import DataError

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


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a .zip or .tar(.gz) refusing absolute paths, ``..`` escapes and links out of ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"archive {str(archive)!r} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                if not _inside(dest, dest / member.filename):
                    raise DataError(f"{archive}: member {member.filename!r} would be written outside {dest}; refused")
            zf.extractall(dest)
        return dest
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(dest, filter="data")  # refuses absolute paths, escapes and unsafe links
            except tarfile.FilterError as exc:
                raise DataError(f"{archive}: {exc}; refused") from None
        return dest
    raise DataError(f"{archive}: not a zip or tar archive; expected the Kaggle/TCIA download")


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

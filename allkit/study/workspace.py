"""Where the data and the runs are: never inside the installed package.

Data: an explicit path > ``ALLKIT_DATA`` > ``./data`` (or ``../data``, for a notebook run from
``notebooks/``) holding C-NMC > the synthetic stand-in, announced loudly. Runs: ``ALLKIT_RUNS`` > ``./runs``
(or ``../runs`` when it exists). An external test set of unseen people: an explicit path >
``ALLKIT_TEST_DATA`` > none. Caches: ``ALLKIT_CACHE`` > the platform's cache folder
(:func:`allkit.data.cache_dir`).
"""

import hashlib
import os
import warnings
from pathlib import Path

from allkit.data import CNMC, find_cnmc_root
from allkit.errors import DataError

ENV_DATA, ENV_RUNS, ENV_TEST_DATA = "ALLKIT_DATA", "ALLKIT_RUNS", "ALLKIT_TEST_DATA"
SYNTHETIC_BANNER = (
    "*** allkit is using its SYNTHETIC stand-in data, not real C-NMC cells: numbers computed on it say nothing "
    "about leukemia. Set ALLKIT_DATA or pass a data path to use C-NMC 2019. ***"
)


class SyntheticDataWarning(UserWarning):
    """The synthetic stand-in is used instead of real C-NMC cells."""


def fingerprint(cells: CNMC) -> str:
    """Which cells these are, in 12 hex digits: each file's path below the data root, its size and its label. A
    result carries it (run cards, committed notebook outputs) so that it is compared only with results
    computed on the same cells, wherever the folder lies."""
    root, digest = Path(cells.root), hashlib.sha256()
    for path, label in sorted(zip(cells.frame["path"].map(str), cells.frame["label"], strict=True)):
        try:
            name = Path(path).relative_to(root).as_posix()
        except ValueError:
            name = Path(path).name
        digest.update(f"{name}|{os.path.getsize(path)}|{label}\n".encode())
    return digest.hexdigest()[:12]


def local_folders(name: str) -> list[Path]:
    return [Path.cwd() / name, Path.cwd().parent / name]


def has_cnmc(folder: Path) -> bool:
    try:
        find_cnmc_root(folder)
    except DataError:
        return False
    return True


def data_root(root=None, *, announce: bool = True) -> tuple[Path, str]:
    """``(folder, source)``: source is ``argument``, ``ALLKIT_DATA``, ``./data`` or ``synthetic``. A path
    given explicitly (or in ``ALLKIT_DATA``) that does not exist is an error, never a silent fallback."""
    if root is not None:
        return Path(root).expanduser(), "argument"
    if os.environ.get(ENV_DATA):
        path = Path(os.environ[ENV_DATA]).expanduser()
        if not path.exists():
            raise DataError(
                f"{ENV_DATA}={os.environ[ENV_DATA]!r} does not exist; expected a folder holding C-NMC_Leukemia/"
            )
        return path, ENV_DATA
    for folder in local_folders("data"):
        if folder.is_dir() and has_cnmc(folder):
            return folder, "./data"
    from allkit.study.synthetic import default_synthetic_root

    if announce:  # once: a warning (the CLI prints it as one line), not a warning and a print
        warnings.warn(SYNTHETIC_BANNER, SyntheticDataWarning, stacklevel=2)
    return default_synthetic_root(), "synthetic"


def test_data_root(test_data=None) -> Path | None:
    """An external test set of people the data under :func:`data_root` does not hold: ``test_data`` >
    ``ALLKIT_TEST_DATA`` > none (the test part is then split from the data itself). ``False``: none, whatever
    the environment says (to rebuild a run that had none)."""
    if test_data is False:
        return None
    chosen = test_data if test_data is not None else os.environ.get(ENV_TEST_DATA) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.exists():
        raise DataError(f"test data {str(chosen)!r} does not exist; expected a folder of cells (all/ and hem/)")
    return path


def runs_dir() -> Path:
    """``ALLKIT_RUNS``, else ``./runs`` (``../runs`` if that exists and ``./runs`` does not)."""
    if os.environ.get(ENV_RUNS):
        return Path(os.environ[ENV_RUNS]).expanduser()
    here, parent = local_folders("runs")
    return parent if parent.is_dir() and not here.is_dir() else here

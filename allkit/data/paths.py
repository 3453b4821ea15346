"""Where the data is: explicit argument > ``ALLKIT_DATA`` > ``data/`` in the repository > synthetic default."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from allkit.data.discover import find_cnmc_root
from allkit.errors import DataError

ENV_DATA = "ALLKIT_DATA"
ENV_CACHE = "ALLKIT_CACHE"
REPO_DATA = Path(__file__).resolve().parents[2] / "data"


class SyntheticDataWarning(UserWarning):
    """Raised (as a warning) whenever the synthetic stand-in is used instead of real C-NMC cells."""


SYNTHETIC_BANNER = (
    "*** allkit is using its SYNTHETIC stand-in data, not real C-NMC cells: numbers computed on it say "
    "nothing about leukemia. Set ALLKIT_DATA or pass a data path to use C-NMC 2019. ***"
)


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "allkit").expanduser()


def _has_cnmc(folder: Path) -> bool:
    try:
        find_cnmc_root(folder)
    except DataError:
        return False
    return True


def resolve_data_root(root: str | Path | None = None, *, announce: bool = True) -> tuple[Path, str]:
    """Return ``(path, source)``; source is ``argument``, ``ALLKIT_DATA``, ``repository`` or ``synthetic``.

    An explicit argument or ``ALLKIT_DATA`` that does not exist is an error, never a silent fallback.
    """
    if root is not None:
        return Path(root).expanduser(), "argument"
    env = os.environ.get(ENV_DATA)
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise DataError(f"{ENV_DATA}={env!r} does not exist; expected a folder holding C-NMC_Leukemia/")
        return path, ENV_DATA
    if REPO_DATA.is_dir() and _has_cnmc(REPO_DATA):
        return REPO_DATA, "repository"
    from allkit.data.synthetic import default_synthetic_root

    if announce:
        announce_synthetic()
    return default_synthetic_root(), "synthetic"


def announce_synthetic() -> None:
    warnings.warn(SYNTHETIC_BANNER, SyntheticDataWarning, stacklevel=3)
    print(SYNTHETIC_BANNER, file=sys.stderr)

"""Shared fixtures: a small synthetic C-NMC tree, and the real fold-1 sample when ALLKIT_DATA points at it."""

from __future__ import annotations

import os
from pathlib import Path

# Spinning OpenMP threads starve each other on a busy 2-core machine (a 0.1 s forward took 1-3 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")

REAL_DATA = os.environ.get("ALLKIT_DATA")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Caches (decoded cells, the synthetic default) go to a per-session folder, never ~/.cache.
    if not os.environ.get("ALLKIT_TEST_KEEP_CACHE"):
        os.environ["ALLKIT_CACHE"] = str(tmp_path_factory.mktemp("allkit-cache"))
    yield


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Folder holding a synthetic C-NMC_Leukemia/ tree (3 folds, prelim and final test sets)."""
    from allkit.data.synthetic import make_synthetic_cnmc

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_cnmc(root, seed=0, cells_per_subject=6)
    return root


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real C-NMC fold-1 sample (../shared/data), when ALLKIT_DATA points at it."""
    if not REAL_DATA or not (Path(REAL_DATA) / "C-NMC_Leukemia").is_dir():
        pytest.skip("real C-NMC sample not available (set ALLKIT_DATA=../shared/data)")
    return Path(REAL_DATA)

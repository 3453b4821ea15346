"""Shared fixtures: small synthetic C-NMC trees (whole, or as cached training and test cells), one torch thread,
and the real C-NMC cells when ALLKIT_DATA points at them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Spinning OpenMP threads starve each other on a busy 2-core machine (a 0.1 s forward took 1-3 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402
import pytest  # noqa: E402

from allkit.data import CellDataset, build_cache, load_cnmc  # noqa: E402
from allkit.perf import torch_threads  # noqa: E402
from allkit.study.synthetic import make_synthetic_cnmc  # noqa: E402

matplotlib.use("Agg")

REAL_DATA = os.environ.get("ALLKIT_DATA")
ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# An external test set set in the environment must not become the test part of the tests' own data.
os.environ.pop("ALLKIT_TEST_DATA", None)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Caches (decoded cells, the synthetic default) go to a per-session folder, never ~/.cache.
    if not os.environ.get("ALLKIT_TEST_KEEP_CACHE"):
        os.environ["ALLKIT_CACHE"] = str(tmp_path_factory.mktemp("allkit-cache"))
    yield


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Folder holding a synthetic C-NMC_Leukemia/ tree (3 folds, prelim and final test sets)."""
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_cnmc(root, seed=0, cells_per_subject=6)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a 2-core
    runner shared with other processes, spinning OpenMP threads made a 0.1 s forward pass take 2 s (measured)."""
    with torch_threads(1):
        yield


def cached_train_test(root: Path, *, cache_size: int, **synthetic) -> dict:
    """A synthetic C-NMC tree made under ``root`` (``synthetic``: arguments of ``make_synthetic_cnmc``) and
    cached at ``cache_size`` px: its training folds (``train``) and preliminary test set (``test``) as
    datasets, with ``root``, ``cnmc``, ``frame`` and ``cache``. Training and test subjects never overlap."""
    cnmc = make_synthetic_cnmc(root, **synthetic)
    frame = load_cnmc(cnmc).frame
    cache = build_cache(frame, size=cache_size, folder=root / "cache", progress=False)
    train = frame[frame["fold"].str.startswith("fold_")]
    test = frame[frame["fold"] == "prelim"]
    assert set(train["subject"]).isdisjoint(test["subject"])
    return {
        "root": root,
        "cnmc": cnmc,
        "frame": frame,
        "cache": cache,
        "train": CellDataset(cache, train),
        "test": CellDataset(cache, test),
    }


@pytest.fixture(scope="session")
def train_test_factory():
    """:func:`cached_train_test`, for module-scoped data fixtures."""
    return cached_train_test


@pytest.fixture
def data(tmp_path) -> Path:
    """A small synthetic C-NMC tree of the test's own (tests change it): the folder holding C-NMC_Leukemia/."""
    return make_synthetic_cnmc(tmp_path / "data", seed=3, cells_per_subject=4, final_cells=0).parent


@pytest.fixture
def no_preparation(monkeypatch):
    """Fails the test if data preparation or training starts: bad arguments are refused before any work."""
    import allkit.study.store

    def refuse(*args, **kwargs):
        raise AssertionError("work started although the arguments were already known to be bad")

    for name in ("prepare", "choose_backbone", "open_run"):
        monkeypatch.setattr(allkit.study.store, name, refuse)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real C-NMC cells (../shared/data: folds 0 and 1, part of fold 2), when ALLKIT_DATA points at it."""
    if not REAL_DATA or not (Path(REAL_DATA) / "C-NMC_Leukemia").is_dir():
        pytest.skip("real C-NMC cells not available (set ALLKIT_DATA=../shared/data)")
    return Path(REAL_DATA)


def pytest_collection_modifyitems(items):
    # `-m real` selects the tests on the real cells (they skip without ALLKIT_DATA), `-m "not slow"` the fast ones
    for item in items:
        if "real_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def built_book():
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"jupyter-book failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "warning" not in result.stderr.lower(), result.stderr[-4000:]
    return HTML


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()

"""What every chapter of the book does first: find the data, pick the profile, print the run card.

::

    from allkit.study.book import setup
    ctx = setup("04_finetuning")      # prints the run card
    run = ctx.run()                   # the profile's run from the store: loaded if already done, else trained
    improved = ctx.run("improved")    # the same preset with the improved recipe
    authors = ctx.run(head="imagenet")  # one setting changed (dataclasses.replace)

On Colab (or anywhere with ``ALLKIT_DOWNLOAD=1``) a missing data set is fetched with kagglehub first. Each
notebook's first code cell is the same: a Colab form (profile, runs on Google Drive), the pinned install
(:data:`INSTALL`), then :func:`setup`.
"""

import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from allkit import perf
from allkit.constants import (
    CROP_SIZE,
    FLIP_PROBABILITY,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ORIGINAL_SIZE,
    ROTATION_DEGREES,
)
from allkit.data import CNMC, load_cnmc
from allkit.device import select_device
from allkit.study.config import ENV_PRESET, Config, default_preset, get_config
from allkit.study.download import download_cnmc
from allkit.study.prepare import data_fingerprint, describe_device, version_line
from allkit.study.store import Run, reproduce, run
from allkit.study.workspace import (
    ENV_DATA,
    ENV_RUNS,
    ENV_TEST_DATA,
    SyntheticDataWarning,
    data_root,
    has_cnmc,
    local_folders,
    runs_dir,
    test_data_root,
)

# Where the book is published and which release a Colab setup cell installs: one place, for whoever publishes
# the repository (tag the release, then set RELEASE to the tag; tests/test_book.py checks every notebook uses it).
REPOSITORY = "allkit/allkit"
RELEASE = "v0.1.0"
INSTALL = f"allkit[download,offline] @ git+https://github.com/{REPOSITORY}@{RELEASE}"
COLAB_URL = "https://colab.research.google.com/github/{repo}/blob/{release}/notebooks/{name}.ipynb"
DRIVE_RUNS = "/content/drive/MyDrive/allkit-runs"
# Minutes per chapter on a Colab T4 with the paper profile: ESTIMATES from the paper profile's work (10,661
# training and 1,867 test cells, EfficientNet-B0, 5 epochs) at the speeds benchmarks/gpu.py targets, not
# measurements; replace them with measured ones when the book runs on a GPU.
T4_MINUTES = {
    "01_data": 4,
    "02_preprocessing": 4,
    "03_efficientnet": 4,
    "04_finetuning": 12,
    "05_hybrid": 2,
    "06_gradcam": 2,
    "07_backbones": 45,
    "08_literature": 1,
    "09_authors_code": 50,
    "10_patients_calibration": 15,
    "11_improved_recipe": 50,
    "12_across_people": 120,
    "13_deployment": 10,
}


def on_colab() -> bool:
    return "google.colab" in sys.modules


def colab_url(name: str) -> str:
    return COLAB_URL.format(repo=REPOSITORY, release=RELEASE, name=name)


def shown(path) -> str:
    """A path as a page may show it: relative to the working directory, else named by the variable that set it,
    else its last two parts, so that no machine's folders end up in the book."""
    path = Path(path)
    for name in (ENV_DATA, ENV_TEST_DATA, ENV_RUNS):
        if os.environ.get(name) and path == Path(os.environ[name]):
            return f"${name}"
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve().parent))
    except ValueError:
        return str(Path("…", *path.parts[-2:]))


def _kaggle_credentials() -> None:
    """On Colab: KAGGLE_USERNAME / KAGGLE_KEY from the notebook's secrets (the key icon on the left), else
    kagglehub's own login form."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return
    try:
        from google.colab import userdata  # only on Colab

        for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
            os.environ[name] = userdata.get(name)
    except Exception:  # no secret stored, or not allowed for this notebook: ask
        import kagglehub

        kagglehub.login()


def _maybe_download() -> bool:
    """Fetch C-NMC where a chapter may (Colab, or ``ALLKIT_DOWNLOAD=1``) and none is here. Whatever stops it is
    said in one line, and the chapter goes on with the synthetic stand-in (its run card says so). Returns
    whether that line was printed (the synthetic banner is then not repeated)."""
    if os.environ.get(ENV_DATA) or any(f.is_dir() and has_cnmc(f) for f in local_folders("data")):
        return False
    if not (on_colab() or os.environ.get("ALLKIT_DOWNLOAD") == "1"):
        print(
            "allkit: DATA is 'Kaggle' but no C-NMC is here and downloads happen only on Colab (set ALLKIT_DATA to "
            "your copy, or ALLKIT_DOWNLOAD=1 with Kaggle credentials): this chapter runs on the SYNTHETIC stand-in"
        )
        return True
    try:
        if on_colab():
            _kaggle_credentials()
        os.environ[ENV_DATA] = str(download_cnmc(Path.cwd() / "data"))  # kagglehub's copy: once per runtime
    except Exception as err:  # credentials, network, quota, a damaged archive: one line, then the stand-in
        print(
            f"allkit: C-NMC could not be downloaded ({str(err).splitlines()[0]}): this chapter runs on the "
            "SYNTHETIC stand-in; `allkit data download --help` gives the manual route"
        )
        return True
    return False


def _runs_on_drive() -> None:
    from google.colab import drive  # only on Colab

    drive.mount("/content/drive")
    Path(DRIVE_RUNS).mkdir(parents=True, exist_ok=True)
    os.environ[ENV_RUNS] = DRIVE_RUNS


def show_source(obj):
    """The source code of a function or class of allkit, highlighted: what the chapter runs, shown as it is
    (``inspect.getsource`` reads the installed file, so the page cannot drift from the code)."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def describe_pipeline(normalize: bool = True, train: bool = True, size: int = IMAGE_SIZE) -> list[str]:
    """Human-readable steps of the (training, or evaluation if ``train=False``) pipeline, in order."""
    steps = [
        "Convert to 8-bit RGB (grayscale, palette and alpha images via Pillow; 16-bit scaled 65535 -> 255)",
        f"CenterCrop({CROP_SIZE}): keep the central {CROP_SIZE}x{CROP_SIZE} pixels of the "
        f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE} image (other sizes: {CROP_SIZE}/{ORIGINAL_SIZE} of the shorter side)",
        f"Resize({size}): bilinear with antialiasing to {size}x{size} pixels",
    ]
    if train:
        steps += [
            f"RandomHorizontalFlip(p={FLIP_PROBABILITY:g}): mirror left-right with probability {FLIP_PROBABILITY:g}",
            f"RandomVerticalFlip(p={FLIP_PROBABILITY:g}): mirror top-bottom with probability {FLIP_PROBABILITY:g}",
            f"RandomRotation({ROTATION_DEGREES:g}): rotate by an angle drawn uniformly in "
            f"[-{ROTATION_DEGREES:g}, {ROTATION_DEGREES:g}] degrees (nearest neighbour, black corners)",
        ]
    steps.append("ToTensor: float32 tensor [3, H, W] with values in [0, 1]")
    if normalize:
        steps.append(
            f"Normalize(mean={_fmt(IMAGENET_MEAN)}, std={_fmt(IMAGENET_STD)}): ImageNet statistics, as the "
            "pretrained weights expect (not in the paper's list)"
        )
    return steps


@dataclass
class Context:
    """The notebook's configuration (its preset), data and run store."""

    notebook: str
    config: Config
    data_root: Path
    data_source: str
    cells: CNMC
    runs_dir: Path
    test_root: Path | None = None
    colab_default: bool = False
    _runs: dict = field(default_factory=dict, repr=False)

    @property
    def synthetic(self) -> bool:
        return self.cells.synthetic

    def run(self, recipe: str | None = None, *, progress: bool = True, **changes) -> Run:
        """The chapter's preset with ``recipe`` (default: the paper's) and ``changes`` (settings of
        :class:`~allkit.study.config.Config`), run through the store: loaded when this fine-tune is done, else
        trained once; the hybrid, its scores (``metrics.json``), the saved model and the figures are added."""
        config = replace(self.config.with_recipe(recipe or "paper"), **changes)
        if config not in self._runs:
            main = config == self.config  # the chapter's own run, however asked for: with its saved model and figures
            self._runs[config] = (reproduce if main else run)(
                config, self.data_root, runs=self.runs_dir, test_data=self.test_root or False, progress=progress
            )
        return self._runs[config]


def run_card(ctx: Context) -> dict:
    frame = ctx.cells.frame
    return {
        "notebook": ctx.notebook,
        "profile": ctx.config.name
        + (" (Colab with a GPU: the paper's protocol by default)" if ctx.colab_default else ""),
        "data": f"{shown(ctx.data_root)} ({ctx.data_source})",
        "tested on": f"{shown(ctx.test_root)}: people the data does not hold"
        if ctx.test_root
        else "people held out of the data",
        "real or synthetic": "SYNTHETIC stand-in (not real cells)" if ctx.synthetic else "real C-NMC 2019 cells",
        "cells": f"{len(frame)} labelled ({int(frame.label.sum())} ALL / {int((frame.label == 0).sum())} HEM), "
        f"{frame.subject.nunique()} subjects",
        "data fingerprint": data_fingerprint(ctx.cells, ctx.test_root),
        "backbone (profile)": f"{ctx.config.backbone} ({ctx.config.weights} weights; offline fallback: "
        f"{ctx.config.fallback_backbone or 'none'})",
        "device": describe_device(select_device("auto")),
        "time on a Colab T4": f"about {T4_MINUTES[ctx.notebook]} min with the paper profile (an estimate, not yet measured)"
        if ctx.notebook in T4_MINUTES
        else "unknown",
        "allkit": version_line(),
    }


def setup(
    notebook: str,
    profile: str | None = None,
    data: str | None = None,
    *,
    runs_on_drive: bool = False,
    download: bool = True,
) -> Context:
    """Resolve the profile and the data (``ALLKIT_PROFILE``, ``ALLKIT_DATA``, ``ALLKIT_TEST_DATA``) and print
    the run card. On Colab: fetch C-NMC 2019 once per runtime (Kaggle credentials from the notebook's
    secrets, else a login form; ``download=False``: the synthetic stand-in) and, with ``runs_on_drive``, keep finished runs on Google Drive so that later
    chapters (and later sessions) load them instead of training again."""
    if runs_on_drive and on_colab():
        _runs_on_drive()
    said = _maybe_download() if download and data is None else False
    perf.speed_up()
    chosen = get_config(None if profile in (None, "", "auto") else profile)
    colab_default = profile in (None, "", "auto") and not os.environ.get(ENV_PRESET) and default_preset() == "paper"
    with warnings.catch_warnings(record=True) as caught:  # printed as a line, not with workspace.py's path
        warnings.simplefilter("always", SyntheticDataWarning)
        root, source = data_root(data, announce=not said)
    for warning in caught:
        print(warning.message)
    ctx = Context(notebook, chosen, Path(root), source, load_cnmc(root), runs_dir(), test_data_root(), colab_default)
    card = run_card(ctx)
    width = max(len(k) for k in card)
    print("Run card")
    for key, value in card.items():
        print(f"  {key:<{width}}  {value}")
    return ctx

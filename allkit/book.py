"""What every notebook of the book does first: find the data, pick the profile, print the run card.

    from allkit.book import setup
    ctx = setup("04_finetuning")      # prints the run card
    run = ctx.run()                   # the profile's reproduce() run: loaded if already done, else computed

On Colab (or anywhere with ``ALLKIT_DOWNLOAD=1``) a missing data set is fetched with kagglehub first.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import allkit
from allkit.data import load_cnmc, resolve_data_root
from allkit.data.discover import CNMC
from allkit.profiles import Profile, get_profile

REPOSITORY = "allkit/allkit"
COLAB_URL = "https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}.ipynb"


def on_colab() -> bool:
    return "google.colab" in sys.modules


def colab_url(name: str) -> str:
    return COLAB_URL.format(repo=REPOSITORY, name=name)


def _maybe_download() -> None:
    from allkit.data.paths import ENV_DATA, REPO_DATA, _has_cnmc

    if os.environ.get(ENV_DATA) or (REPO_DATA.is_dir() and _has_cnmc(REPO_DATA)):
        return
    if on_colab() or os.environ.get("ALLKIT_DOWNLOAD") == "1":
        from allkit.data.download import download_cnmc

        os.environ[ENV_DATA] = str(download_cnmc(Path.cwd() / "data"))


@dataclass
class Context:
    """The notebook's profile, data and run folder."""

    notebook: str
    profile: Profile
    data_root: Path
    data_source: str
    cells: CNMC
    runs_dir: Path
    _run: object = field(default=None, repr=False)

    @property
    def synthetic(self) -> bool:
        return self.cells.synthetic

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.profile.name

    def run(self, *, progress: bool = True):
        """The profile's full run (fine-tune → XGBoost → metrics → figures), reused when already on disk
        for the same data and profile."""
        from allkit.pipeline import load_run, reproduce

        if self._run is not None:
            return self._run
        metrics = self.run_dir / "metrics.json"
        if metrics.is_file():
            saved = json.loads(metrics.read_text())
            if (saved.get("profile") == self.profile.to_dict()
                    and saved["run_card"]["data"] == str(self.data_root)
                    and (self.run_dir / "model" / "manifest.json").is_file()):
                self._run = load_run(self.run_dir, with_model=True)
                print(f"(reusing the finished run in {self.run_dir})")
                return self._run
        self._run = reproduce(self.profile, self.data_root, out=self.run_dir, progress=progress)
        return self._run


    def variant(self, variant, *, progress: bool = True):
        """One controlled fine-tune of :mod:`allkit.experiments` on this notebook's profile and data: loaded
        if this exact experiment is already in ``runs/<profile>/experiments/``, else computed now."""
        from allkit.experiments import run_variant

        return run_variant(variant, self.profile, self.data_root, runs_dir=self.runs_dir, progress=progress)


def run_card(ctx: Context) -> dict:
    from allkit.perf import select_device
    from allkit.pipeline import describe_device, git_commit

    frame = ctx.cells.frame
    return {
        "notebook": ctx.notebook,
        "profile": ctx.profile.name,
        "data": f"{ctx.data_root} ({ctx.data_source})",
        "real or synthetic": "SYNTHETIC stand-in (not real cells)" if ctx.synthetic else "real C-NMC 2019 cells",
        "cells": f"{len(frame)} labelled ({int((frame.label == 1).sum())} ALL / {int((frame.label == 0).sum())} HEM), "
                 f"{frame.subject.nunique()} subjects",
        "backbone (profile)": f"{ctx.profile.backbone} ({ctx.profile.weights} weights; offline fallback: "
                              f"{ctx.profile.fallback_backbone or 'none'})",
        "device": describe_device(select_device("auto")),
        "allkit": f"{allkit.__version__} (commit {git_commit() or 'unknown'})",
    }


def setup(notebook: str, profile: str | None = None, data: str | None = None) -> Context:
    """Resolve profile and data (``ALLKIT_PROFILE``, ``ALLKIT_DATA``), print the run card."""
    _maybe_download()
    chosen = get_profile(profile)
    root, source = resolve_data_root(data)
    cells = load_cnmc(root)
    runs_dir = Path(os.environ.get("ALLKIT_RUNS") or Path(__file__).resolve().parents[1] / "runs")
    ctx = Context(notebook, chosen, Path(root), source, cells, runs_dir)
    card = run_card(ctx)
    width = max(len(k) for k in card)
    print("Run card")
    for key, value in card.items():
        print(f"  {key:<{width}}  {value}")
    return ctx

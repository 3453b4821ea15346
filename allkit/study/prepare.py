"""The data and the model a configuration runs on: the split (by the release's folds, the paper's protocol, by
person, or by image on purpose), the per-person caps, the cells cache, the backbone (or its offline fallback)
and what every run records of where it ran (the run card)."""

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

import allkit
from allkit import perf
from allkit.data import (
    CellDataset,
    Split,
    build_cache,
    check_leakage,
    load_cnmc,
    pixel_digests,
    split_by_image,
    split_by_subject,
    split_folds,
    split_paper,
    without_copies,
)
from allkit.device import select_device
from allkit.errors import ConfigError, ModelError
from allkit.models import build_model, get_backbone
from allkit.study.config import Config
from allkit.study.workspace import data_root, fingerprint, test_data_root


def git_commit() -> str | None:
    """The commit of the allkit source: the git checkout it runs from, else the commit pip recorded when it was
    installed from a repository (PEP 610's ``direct_url.json``: ``pip install "allkit @ git+...@TAG"``, as the
    book's Colab cell does); ``None`` for an install that records none (a wheel, an sdist). A checkout whose
    allkit source differs from its commit says so (``abc1234+changes``): the commit alone would not be what ran."""
    here = Path(allkit.__file__).parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0 and out.stdout.strip():
            changed = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=5,
            )
            return out.stdout.strip() + ("+changes" if changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        direct = json.loads(importlib.metadata.distribution("allkit").read_text("direct_url.json") or "null")
        return (direct or {}).get("vcs_info", {}).get("commit_id", "")[:7] or None
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        return None


def version_line() -> str:
    """``0.1.0 (commit abc1234)``, ``0.1.0 (commit abc1234+changes)`` (the source differs from that commit) or
    ``0.1.0 (installed, no commit recorded)``: what a run card says of allkit."""
    commit = git_commit()
    return f"{allkit.__version__} ({f'commit {commit}' if commit else 'installed, no commit recorded'})"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def make_split(
    frame: pd.DataFrame,
    config: Config,
    external: pd.DataFrame | None = None,
    digests: dict[str, str] | None = None,
) -> Split:
    """The configuration's split: the paper's (when the preliminary test set is present and asked for), the release's
    folds (``"folds"``: fold 2 is the test part, folds 0-1 are split by subject into training and validation),
    else by subject; ``"image"`` is the leaky by-image split of the cells and part sizes of the folds protocol
    (else of the subject split). With
    ``external`` cells (a test set of other people), ``frame`` is split into training and validation only, by
    subject, and ``external`` is the test part. With ``digests`` (pixel digests of every cell), people who share
    a picture stay on one side, and where a fixed protocol puts copies apart they leave the evaluation side."""
    if external is not None and config.split != "image":
        inside = split_by_subject(frame, val_size=config.val_size, test_size=0, seed=config.seed, digests=digests)
        test = external.assign(split="test").reset_index(drop=True)
        chosen = Split(inside.train, inside.val, test, protocol="subject+external", seed=config.seed)
        return chosen if digests is None else without_copies(chosen, digests)
    has_prelim = (frame["fold"] == "prelim").any()
    if config.split in ("paper", "auto") and has_prelim:
        chosen = split_paper(frame, seed=config.seed)
        return chosen if digests is None else without_copies(chosen, digests)
    if config.split == "folds" and has_folds(frame):
        cv = None if config.cv_fold is None else (config.cv_fold, config.cv_folds)
        return split_folds(frame, val_size=config.val_size, seed=config.seed, digests=digests, cv=cv)
    if config.cv_fold is not None:
        raise ConfigError(
            "cross-validation over people (cv_fold) runs on the release's folds: this data has no fold 2 "
            "beside another training fold"
        )
    safe = split_by_subject(
        frame, val_size=config.val_size, test_size=config.test_size, seed=config.seed, digests=digests
    )
    if config.split != "image":
        return safe
    # The leaky split it is compared with draws from the same cells with the same part sizes, by image instead of
    # by person: the release's folds protocol where it can run, else the subject split
    base = split_folds(frame, val_size=config.val_size, seed=config.seed) if has_folds(frame) else safe
    cells = pd.concat([base.train, base.val, base.test], ignore_index=True)
    n = len(cells)
    return split_by_image(cells, val_size=len(base.val) / n, test_size=len(base.test) / n, seed=config.seed, leaky=True)


def has_folds(frame: pd.DataFrame) -> bool:
    """Whether the folds protocol can run: fold 2 and at least one other training fold are present."""
    folds = set(frame["fold"].astype(str))
    return "fold_2" in folds and bool(folds & {"fold_0", "fold_1"})


def _per_subject(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` cells of each person, drawn seeded; row order kept."""
    if n is None:
        return frame
    parts = [g if len(g) <= n else g.sample(n, random_state=seed) for _, g in frame.groupby("subject")]
    return pd.concat(parts).sort_index().reset_index(drop=True) if parts else frame


def _subset(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` cells, drawn per subject (every subject and the class ratio kept), seeded."""
    if n is None or len(frame) <= n:
        return frame.reset_index(drop=True)
    parts = [g.sample(max(1, round(len(g) * n / len(frame))), random_state=seed) for _, g in frame.groupby("subject")]
    return pd.concat(parts).sort_index().reset_index(drop=True)


@dataclass
class RunData:
    """What a configuration runs on: its split, the cached datasets per part, the backbone it got (perhaps the
    offline fallback), its normalisation and the device."""

    config: Config
    data_root: Path
    data_source: str
    synthetic: bool
    split: Split
    datasets: dict[str, CellDataset]
    backbone: str
    weights: str | None
    weights_note: str
    normalize: object  # False, or the backbone's own (mean, std)
    device: torch.device
    notes: list[str] = field(default_factory=list)
    test_root: Path | None = None  # another data set of other people (the test part), if any
    fingerprint: str = ""  # of the cells (and the test set's): what a run's key depends on

    def card(self) -> dict:
        counts = {
            name: {
                "cells": len(ds),
                "ALL": int(ds.labels.sum()),
                "HEM": int(len(ds) - ds.labels.sum()),
                "subjects": int(ds.frame["subject"].nunique()),
            }
            for name, ds in self.datasets.items()
        }
        return {
            "profile": self.config.name,
            "recipe": self.config.recipe,
            "data": str(self.data_root),
            "data_source": self.data_source,
            "data fingerprint": self.fingerprint,
            "test_data": None if self.test_root is None else str(self.test_root),
            "synthetic": self.synthetic,
            "split": self.split.protocol,
            "counts": counts,
            "dropped_copies": dict(self.split.dropped),
            "image_size": self.config.image_size,
            "backbone": self.backbone,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "normalize": "the backbone's own mean/std" if self.normalize is not False else False,
            "device": describe_device(self.device),
            "allkit": allkit.__version__,
            "commit": git_commit(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }


_SAID: set[str] = set()


def choose_backbone(config: Config) -> tuple[Config, torch.nn.Module, str]:
    """``(config, model, note)``: the model the configuration asks for, or, where its ImageNet weights cannot be
    had, its offline fallback (said at once, before hours of training, not only in the run card). The returned
    configuration names what was built (backbone, weights, no fallback left): what a run's key is made of."""
    chosen = config.weights
    chosen = None if isinstance(chosen, str) and chosen.lower() in ("none", "random") else chosen
    if chosen is not None and get_backbone(config.backbone).offline and str(chosen).lower() in ("imagenet", "offline"):
        chosen = "offline"  # the same packaged file under both names: one run
    classes = 1000 if config.head == "imagenet" else 2

    def build(name, weights):
        # The new head is initialised from torch's RNG, seeded here for each try: the same configuration gives the
        # same model in every process, whether or not a failed try came first; the caller's RNG is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.training_seed)
            return build_model(name, weights, num_classes=classes)

    try:
        model = build(config.backbone, chosen)
        note = f"{config.backbone} with {chosen or 'random'} weights"
        return replace(config, weights=chosen, fallback_backbone=None), model, note
    except ModelError:
        if config.fallback_backbone is None:
            raise
        fallback = config.fallback_backbone
        note = (
            f"{config.backbone}'s {chosen} weights could not be loaded here (no internet?); using {fallback} with "
            "its packaged offline ImageNet weights instead"
        )
        if note not in _SAID:  # once per process: a chapter opening twenty stored runs says it once
            _SAID.add(note)
            print(f"allkit: {note}", file=sys.stderr)
        model = build(fallback, "offline")
        return replace(config, backbone=fallback, weights="offline", fallback_backbone=None), model, note


def data_fingerprint(cells, test_root: Path | None = None) -> str:
    """Which cells a run computes on (:func:`allkit.study.workspace.fingerprint`; with another test set, both)."""
    if test_root is None:
        return fingerprint(cells)
    return f"{fingerprint(cells)}+{fingerprint(load_cnmc(test_root))}"


def prepare(
    config: Config,
    data=None,
    *,
    device="auto",
    progress=True,
    split=None,
    test_data=None,
) -> tuple[RunData, torch.nn.Module]:
    """Load and split the data, cache it, build the model (its new head seeded by the training seed).
    ``split``: a callable ``frame → Split`` instead of the configuration's. ``test_data`` (default
    ``ALLKIT_TEST_DATA``; ``False``: none): a folder of other people's cells, the test part."""
    perf.speed_up()
    root, source = data_root(data)
    test_root = test_data_root(test_data)
    device = select_device(device)
    built, model, note = choose_backbone(config)
    name, chosen = built.backbone, built.weights
    cells = load_cnmc(root)
    external = None if test_root is None else load_cnmc(test_root).frame.assign(fold="external")
    digests = None
    if split is not None:
        chosen_split = split(cells.frame)
    else:
        everyone = cells.frame if external is None else pd.concat([cells.frame, external], ignore_index=True)
        # Decoded once per file and remembered: which people the release files one picture under.
        digests = None if config.split == "image" else pixel_digests(everyone["path"], progress=progress)
        chosen_split = make_split(cells.frame, config, external, digests)
    capped = {
        part: _per_subject(getattr(chosen_split, part), config.max_cells_per_subject, config.seed)
        for part in ("train", "val")
    }
    frames = {
        "train": _subset(capped["train"], config.max_train_cells, config.seed),
        "val": _subset(capped["val"], config.max_eval_cells, config.seed),
        "test": _subset(chosen_split.test, config.max_eval_cells, config.seed),
    }
    notes = list(cells.notes)
    native = get_backbone(name).input_size
    if name == "inception_v3" and config.image_size < native:  # its auxiliary head needs 299 px
        notes.append(f"inception_v3 needs {native} px input: image_size {config.image_size} -> {native}")
        config = replace(config, image_size=native)
    if config.split == "paper" and chosen_split.protocol != "paper":
        notes.append(
            "the profile asks for the paper's split; the data has no preliminary test set, so a "
            "subject-wise split of what is present is used"
        )
    if config.split == "folds" and split is None and chosen_split.protocol == "subject":
        notes.append(
            "the profile tests on fold 2 (people no step has seen) and trains on folds 0-1; the data does not "
            "hold fold 2 and another fold, so a subject-wise split of what is present is used"
        )
    for part, n in chosen_split.dropped.items():
        notes.append(f"{n} {part} cell(s) dropped: the same pictures are filed under a training person by the release")
    cache = build_cache(pd.concat(frames.values(), ignore_index=True), size=config.image_size, progress=progress)
    if not chosen_split.leaky:  # the same picture under two subjects would put one cell on both sides
        if digests is None:  # a caller's own split: the digests of its cells (remembered, so decoded once)
            digests = pixel_digests(pd.concat(frames.values())["path"], progress=progress)
        check_leakage(frames, digests=digests)
    datasets = {part: CellDataset(cache, frame) for part, frame in frames.items() if len(frame)}
    normalize = get_backbone(name).mean_std if config.normalize else False
    data = RunData(
        config,
        Path(root),
        source,
        cells.synthetic,
        chosen_split,
        datasets,
        name,
        chosen,
        note,
        normalize,
        device,
        notes,
        test_root,
        data_fingerprint(cells, test_root),
    )
    return data, model


def split_record(prepared: "RunData") -> dict:
    """Which people are in which part of the split, and a hash of which cells (by file name) are: recorded
    with every model, so that a later step on changed data is refused instead of leaking."""
    cells = {name: sorted(Path(p).name for p in ds.frame["path"]) for name, ds in prepared.datasets.items()}
    return {
        "protocol": prepared.split.protocol,
        "subjects": {name: sorted(ds.frame["subject"].astype(str).unique()) for name, ds in prepared.datasets.items()},
        "sha256": hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest(),
    }

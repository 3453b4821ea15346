"""The paper's method end to end, written to a run folder: ``allkit reproduce`` and the book call these,
so a number in the book is the number the CLI prints.

::

    DIR/metrics.json    everything measured, with the run card (data, device, backbone, weights, commit)
    DIR/model/          the hybrid (CNN state_dict + XGBoost JSON + manifest): HybridClassifier.load
    DIR/history.json    per-epoch training curves
    DIR/*.png           the figures
"""

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import allkit
from allkit import perf
from allkit.constants import CROP_RATIO, IMAGE_SIZE
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
from allkit.errors import AllkitError, ModelError
from allkit.files import atomic_folder, read_json, refuse_overlap, save_torch, write_json
from allkit.hybrid import HybridClassifier
from allkit.inference import predict_proba
from allkit.metrics import bootstrap_ci, classification_table, evaluate_with_ci, patient_level, patient_level_metrics
from allkit.models import build_model, get_backbone
from allkit.study import plots
from allkit.study.across import balanced_frame, freeze_early_layers
from allkit.study.calibration import choose_threshold
from allkit.study.profiles import Profile, get_profile
from allkit.study.recipes import Recipe, get_recipe
from allkit.study.workspace import data_root, runs_dir, test_data_root
from allkit.train import Trainer

CNN_FILE, TRAIN_FILE = "cnn.pt", "train.json"


def git_commit() -> str | None:
    """The commit of the allkit source: the git checkout it runs from, else the commit pip recorded when it was
    installed from a repository (PEP 610's ``direct_url.json``: ``pip install "allkit @ git+...@TAG"``, as the
    book's Colab cell does); ``None`` for an install that records none (a wheel, an sdist)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(allkit.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        direct = json.loads(importlib.metadata.distribution("allkit").read_text("direct_url.json") or "null")
        return (direct or {}).get("vcs_info", {}).get("commit_id", "")[:7] or None
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        return None


def version_line() -> str:
    """``0.1.0 (commit abc1234)``, or ``0.1.0 (installed, no commit recorded)``: what a run card says of allkit."""
    commit = git_commit()
    return f"{allkit.__version__} ({f'commit {commit}' if commit else 'installed, no commit recorded'})"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def make_split(
    frame: pd.DataFrame,
    profile: Profile,
    external: pd.DataFrame | None = None,
    digests: dict[str, str] | None = None,
) -> Split:
    """The profile's split: the paper's (when the preliminary test set is present and asked for), the release's
    folds (``"folds"``: fold 2 is the test part, folds 0-1 are split by subject into training and validation),
    else by subject; ``"image"`` is the leaky by-image split with the subject split's part sizes. With
    ``external`` cells (a test set of other people), ``frame`` is split into training and validation only, by
    subject, and ``external`` is the test part. With ``digests`` (pixel digests of every cell), people who share
    a picture stay on one side, and where a fixed protocol puts copies apart they leave the evaluation side."""
    if external is not None and profile.split != "image":
        inside = split_by_subject(frame, val_size=profile.val_size, test_size=0, seed=profile.seed, digests=digests)
        test = external.assign(split="test").reset_index(drop=True)
        chosen = Split(inside.train, inside.val, test, protocol="subject+external", seed=profile.seed)
        return chosen if digests is None else without_copies(chosen, digests)
    has_prelim = (frame["fold"] == "prelim").any()
    if profile.split in ("paper", "auto") and has_prelim:
        chosen = split_paper(frame, seed=profile.seed)
        return chosen if digests is None else without_copies(chosen, digests)
    if profile.split == "folds" and has_folds(frame):
        return split_folds(frame, val_size=profile.val_size, seed=profile.seed, digests=digests)
    safe = split_by_subject(
        frame, val_size=profile.val_size, test_size=profile.test_size, seed=profile.seed, digests=digests
    )
    if profile.split != "image":
        return safe
    n = len(frame)
    return split_by_image(
        frame, val_size=len(safe.val) / n, test_size=len(safe.test) / n, seed=profile.seed, leaky=True
    )


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
class Prepared:
    """One profile's data (split, cache, datasets), backbone, weights and normalisation."""

    profile: Profile
    data_root: Path
    data_source: str
    synthetic: bool
    split: Split
    datasets: dict[str, CellDataset]
    backbone: str
    weights: str | None
    weights_note: str
    normalize: object
    device: torch.device
    notes: list[str] = field(default_factory=list)
    test_root: Path | None = None  # an external test set of other people (the test part), if any

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
            "profile": self.profile.name,
            "data": str(self.data_root),
            "data_source": self.data_source,
            "test_data": None if self.test_root is None else str(self.test_root),
            "synthetic": self.synthetic,
            "split": self.split.protocol,
            "counts": counts,
            "dropped_copies": dict(self.split.dropped),
            "image_size": self.profile.image_size,
            "backbone": self.backbone,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "normalize": self.normalize if isinstance(self.normalize, bool) else "the backbone's own mean/std",
            "device": describe_device(self.device),
            "allkit": allkit.__version__,
            "commit": git_commit(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }


def choose_backbone(profile: Profile, backbone: str | None, weights: str | None):
    """``(model, backbone, weights, note)``: the profile's (or the given) backbone, or, where its ImageNet
    weights cannot be downloaded and the caller named none, the profile's offline fallback."""
    name = backbone or profile.backbone
    chosen = weights if weights is not None else profile.weights
    chosen = None if isinstance(chosen, str) and chosen.lower() in ("none", "random") else chosen
    try:
        return build_model(name, chosen), name, chosen, f"{name} with {chosen or 'random'} weights"
    except ModelError:
        if backbone is not None or weights is not None or profile.fallback_backbone is None:
            raise
        fallback = profile.fallback_backbone
        note = (
            f"{name}'s {chosen} weights could not be loaded here (no internet?); using {fallback} with its "
            "packaged offline ImageNet weights instead"
        )
        print(f"allkit: {note}", file=sys.stderr)  # now, before hours of training, not only in the run card
        return build_model(fallback, "offline"), fallback, "offline", note


def prepare(
    profile: Profile | str | None = None,
    data=None,
    *,
    backbone=None,
    weights=None,
    device="auto",
    progress=True,
    split=None,
    init_seed: int | None = None,
    test_data=None,
) -> tuple[Prepared, torch.nn.Module]:
    """Load and split the data, cache it, build the model. ``split``: a callable ``frame → Split`` instead
    of the profile's. ``init_seed`` (default: the profile's seed) seeds the new head's initialisation.
    ``test_data`` (default ``ALLKIT_TEST_DATA``): a folder of other people's cells, the test part."""
    perf.speed_up()
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    root, source = data_root(data)
    test_root = test_data_root(test_data)
    device = select_device(device)
    # The new head is initialised from torch's global RNG: seeded, so a profile gives the same model in
    # every process, and the caller's RNG stream is left as it was. Chosen first: a fallback is said at once.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(profile.seed if init_seed is None else int(init_seed))
        model, name, chosen, note = choose_backbone(profile, backbone, weights)
    cells = load_cnmc(root)
    external = None if test_root is None else load_cnmc(test_root).frame.assign(fold="external")
    digests = None
    if split is not None:
        chosen_split = split(cells.frame)
    else:
        everyone = cells.frame if external is None else pd.concat([cells.frame, external], ignore_index=True)
        # Decoded once per file and remembered: which people the release files one picture under.
        digests = None if profile.split == "image" else pixel_digests(everyone["path"], progress=progress)
        chosen_split = make_split(cells.frame, profile, external, digests)
    capped = {
        part: _per_subject(getattr(chosen_split, part), profile.max_cells_per_subject, profile.seed)
        for part in ("train", "val")
    }
    frames = {
        "train": _subset(capped["train"], profile.max_train_cells, profile.seed),
        "val": _subset(capped["val"], profile.max_eval_cells, profile.seed),
        "test": _subset(chosen_split.test, profile.max_eval_cells, profile.seed),
    }
    notes = list(cells.notes)
    native = get_backbone(name).input_size
    if name == "inception_v3" and profile.image_size < native:  # its auxiliary head needs 299 px
        notes.append(f"inception_v3 needs {native} px input: image_size {profile.image_size} -> {native}")
        profile = profile.with_overrides(image_size=native)
    if profile.split == "paper" and chosen_split.protocol != "paper":
        notes.append(
            "the profile asks for the paper's split; the data has no preliminary test set, so a "
            "subject-wise split of what is present is used"
        )
    if profile.split == "folds" and split is None and chosen_split.protocol == "subject":
        notes.append(
            "the profile tests on fold 2 (people no step has seen) and trains on folds 0-1; the data does not "
            "hold fold 2 and another fold, so a subject-wise split of what is present is used"
        )
    for part, n in chosen_split.dropped.items():
        notes.append(f"{n} {part} cell(s) dropped: the same pictures are filed under a training person by the release")
    cache = build_cache(pd.concat(frames.values(), ignore_index=True), size=profile.image_size, progress=progress)
    if not chosen_split.leaky:  # the same picture under two subjects would put one cell on both sides
        if digests is None:  # a caller's own split: the digests of its cells (remembered, so decoded once)
            digests = pixel_digests(pd.concat(frames.values())["path"], progress=progress)
        check_leakage(frames, digests=digests)
    datasets = {part: CellDataset(cache, frame) for part, frame in frames.items() if len(frame)}
    normalize = get_backbone(name).mean_std if profile.normalize else False
    prepared = Prepared(
        profile,
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
    )
    return prepared, model


def finetune(
    prepared: Prepared,
    model: torch.nn.Module,
    recipe=None,
    *,
    seed: int | None = None,
    checkpoint_dir=None,
    progress=True,
) -> Trainer:
    """Fine-tune with ``recipe`` (default: the paper's) at the profile's epochs and batch size."""
    p, chosen = prepared.profile, get_recipe(recipe)
    kwargs = chosen.trainer_kwargs()
    if chosen.name == "paper":
        kwargs["lr"] = p.lr  # a profile that sets its own learning rate keeps it under the paper's recipe
    kwargs["keep_best"] = kwargs["keep_best"] and "val" in prepared.datasets
    train = prepared.datasets["train"]
    if chosen.balanced_sampling:
        train = CellDataset(train.cache, balanced_frame(train.frame, p.seed if seed is None else seed))
    if chosen.freeze:
        freeze_early_layers(model, chosen.freeze)
    trainer = Trainer(
        epochs=chosen.epochs or p.epochs,
        batch_size=p.batch_size,
        seed=p.seed if seed is None else seed,
        normalize=prepared.normalize,
        device=prepared.device,
        max_batches=p.max_batches,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        **kwargs,
    )
    return trainer.fit(model, train, prepared.datasets.get("val"))


def fit_hybrid(
    prepared: Prepared, model: torch.nn.Module, recipe=None, *, progress=True, feature_source="features"
) -> HybridClassifier:
    """XGBoost (eta 0.35) on the fine-tuned CNN's features; error and AUC recorded per round. The recipe
    sets how the hybrid predicts (the improved one: over the 8 dihedral views, with the threshold of the
    best validation balanced accuracy); both are parameters of the hybrid, so they are saved with it."""
    p, chosen = prepared.profile, get_recipe(recipe)
    hybrid = HybridClassifier(
        cnn=model,
        backbone=prepared.backbone,
        feature_source=feature_source,
        normalize=prepared.normalize,
        eta=p.xgb_eta,
        n_estimators=p.xgb_estimators,
        device=prepared.device,
        seed=p.seed,
        tta=chosen.tta,
        progress=progress,
    )
    evals = [
        (n, prepared.datasets[k]) for n, k in (("train", "train"), ("validation", "val")) if k in prepared.datasets
    ]
    hybrid.fit(prepared.datasets["train"], eval_set=evals)
    hybrid.provenance_["split"] = split_record(prepared)  # saved with the model: `allkit evaluate` checks it
    if chosen.threshold == "validation" and "val" in prepared.datasets:
        hybrid.set_params(threshold=validation_threshold(prepared, hybrid.predict_proba(prepared.datasets["val"])))
    return hybrid


def validation_threshold(prepared: Prepared, p_val: np.ndarray) -> float:
    """The cut on P(ALL) with the best balanced accuracy on the validation cells."""
    return float(choose_threshold(prepared.datasets["val"].labels.numpy(), p_val).threshold)


def evaluate_predictions(frame: pd.DataFrame, proba: np.ndarray, *, n_boot: int, seed: int, threshold=None) -> dict:
    """Table 2 scores, subject-bootstrap intervals and one diagnosis per person for one set of cells;
    ALL where P(ALL) > ``threshold`` (default: the argmax)."""
    y_true, score, subjects = frame["label"].to_numpy(), proba[:, 1], frame["subject"].to_numpy()
    y_pred = (proba.argmax(1) if threshold is None else score > threshold).astype(int)
    result = evaluate_with_ci(y_true, y_pred, subjects, y_score=score, n_boot=n_boot, seed=seed)
    result["ci"]["balanced_accuracy"] = bootstrap_ci(
        y_true, y_pred, subjects, "balanced_accuracy", n_boot=n_boot, seed=seed
    )
    result["majority_baseline"] = float(max(y_true.mean(), 1 - y_true.mean()))  # always answering the larger class
    result["table2"] = json.loads(classification_table(y_true, y_pred).to_json(orient="index"))
    patients = patient_level(y_true, score, subjects)
    right = pd.Series(y_true == y_pred).groupby(subjects).mean()  # each person's share of cells called right
    patients["accuracy"] = right.loc[patients["subject"]].to_numpy()
    result["patient_level"] = patient_level_metrics(patients)
    result["subject_mean_accuracy"] = float(patients["accuracy"].mean())
    result["patients"] = json.loads(patients.to_json(orient="records"))
    return result


@dataclass
class Run:
    """A finished (or loaded) run: what :func:`reproduce` wrote to ``out``."""

    out: Path
    metrics: dict
    prepared: Prepared | None = None
    model: torch.nn.Module | None = None
    hybrid: HybridClassifier | None = None

    @property
    def card(self) -> dict:
        return self.metrics["run_card"]

    @property
    def history(self) -> list[dict]:
        return self.metrics["history"]


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, Path, torch.device)):
        return value.tolist() if isinstance(value, np.ndarray) else str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def make_figures(run: Run) -> dict[str, Path]:
    """Training curves, XGBoost curves, confusion matrix, sample grid and Grad-CAM grid, as PNG in ``run.out``."""
    card = run.card
    where = f"{card['backbone']}, {card['profile']} profile{', SYNTHETIC data' if card['synthetic'] else ''}"
    figures = {
        "training_curves": plots.plot_training_curves(run.history, title=f"Fine-tuning ({where})"),
        "xgb_curves": plots.plot_xgb_curves(run.metrics["xgb_evals"], title=f"XGBoost on CNN features ({where})"),
        "confusion_matrix": plots.plot_confusion_matrix(
            np.array(run.metrics["hybrid"]["confusion_matrix"]), title=f"Hybrid, test cells ({where})"
        ),
    }
    if run.prepared is not None and run.model is not None:
        test, n = run.prepared.datasets["test"], run.prepared.profile.n_gradcam
        picks = test.frame.groupby("label").head(n).index.to_numpy()
        images, labels = test.__getitems__(picks)
        figures["samples"] = plots.plot_sample_grid(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), n_per_class=n)
        figures["gradcam"] = plots.plot_gradcam(
            run.model, run.prepared.backbone, images, labels.numpy(), normalize=run.prepared.normalize
        )
    saved = {name: plots.save_figure(fig, run.out / f"{name}.png") for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    return saved


def with_recipe(profile: Profile | str | None, recipe) -> Profile:
    """The profile with the recipe's normalisation (when the recipe sets one)."""
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    chosen = get_recipe(recipe)
    return profile if chosen.normalize is None else profile.with_overrides(normalize=chosen.normalize)


RUN_MARKER = ".allkit-run.json"  # written into every folder `writing` fills: what --overwrite may replace
_RUN_FILES = {
    "metrics.json",
    "history.json",
    "model",
    "checkpoints",
    "cnn.pt",
    "train.json",
    "manifest.json",
    "xgboost.json",
}


def is_allkit_run(folder: Path) -> bool:
    """Whether ``folder`` was written by allkit: it has the run marker, or (runs from before the marker) holds
    only the files a run, a trained CNN or a saved model has."""
    if (folder / RUN_MARKER).is_file():
        return True
    names = [p.name for p in folder.iterdir()]
    return bool(set(names) & {"metrics.json", "train.json", "manifest.json"}) and all(
        n in _RUN_FILES or n.endswith(".png") for n in names
    )


@contextlib.contextmanager
def writing(out, *, overwrite: bool = False, inputs: dict | None = None):
    """Claim the run folder ``out`` before any work: refuse a file, a folder that is, holds or lies inside one
    of ``inputs`` (name → path the command reads: the data, a CNN's files), a folder that cannot be written, a
    folder another allkit process is writing (a lock beside it), a non-empty one unless ``overwrite``, and even
    then one that allkit did not write (:func:`is_allkit_run`). Yields a staging folder that replaces ``out``
    only when the block succeeds: a failed or interrupted run leaves the previous one as it was, and two runs
    never mix their files."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise AllkitError(f"--out {out} is a file; expected a folder for the run")
    refuse_overlap(out, inputs or {})
    lock_path = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")  # noqa: SIM115 - held for the whole block
    except OSError as err:
        raise AllkitError(f"cannot write to {out.parent} ({err.strerror}); choose another --out") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AllkitError(
                f"{out} is being written by another allkit process; wait for it, or choose another --out"
            ) from None
        try:
            held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            if held and not overwrite:
                raise AllkitError(
                    f"{out} already holds results ({', '.join(held[:4])}); "
                    "pass --overwrite to replace them, or choose another --out"
                )
            if held and not is_allkit_run(out):
                raise AllkitError(
                    f"{out} is not a folder allkit wrote (it holds {', '.join(held[:4])}"
                    f"{', ...' if len(held) > 4 else ''}); --overwrite replaces only an allkit run or an empty "
                    "folder: choose another --out"
                )
            with atomic_folder(out) as staging:
                yield staging
                write_json(staging / RUN_MARKER, {"written_by": f"allkit {allkit.__version__}"})
        finally:
            lock_path.unlink(missing_ok=True)  # while still held: no lock file is left behind per --out name


def run_inputs(data=None, test_data=None, weights=None) -> dict:
    """What a run reads, as :func:`writing`'s ``inputs``: the data root, the test data and a weights file."""
    inputs = {"the data": data_root(data, announce=False)[0], "the test data": test_data_root(test_data)}
    if weights is not None and Path(str(weights)).expanduser().exists():
        inputs["the weights"] = weights
    return inputs


def split_record(prepared: Prepared) -> dict:
    """Which people are in which part of the split, and a hash of which cells (by file name) are: recorded
    with every model, so that a later step on changed data is refused instead of leaking."""
    cells = {name: sorted(Path(p).name for p in ds.frame["path"]) for name, ds in prepared.datasets.items()}
    return {
        "protocol": prepared.split.protocol,
        "subjects": {name: sorted(ds.frame["subject"].astype(str).unique()) for name, ds in prepared.datasets.items()},
        "sha256": hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest(),
    }


def reproduce(
    profile=None,
    data=None,
    *,
    out=None,
    overwrite=False,
    backbone=None,
    weights=None,
    device="auto",
    progress=True,
    figures=True,
    recipe=None,
    test_data=None,
) -> Run:
    """The whole method: fine-tune, CNN alone on the test cells, hybrid, scores with intervals, figures.
    Writes ``out/metrics.json``, ``out/model/``, ``out/history.json`` and the figures (see :func:`writing`
    for how ``out`` is protected) and returns the Run."""
    started, chosen = time.perf_counter(), get_recipe(recipe)
    profile = with_recipe(profile, chosen)
    out = Path(out) if out is not None else runs_dir() / profile.name
    with writing(out, overwrite=overwrite, inputs=run_inputs(data, test_data, weights)) as staging:
        prepared, model = prepare(
            profile, data, backbone=backbone, weights=weights, device=device, progress=progress, test_data=test_data
        )
        if "test" not in prepared.datasets:
            raise AllkitError("the split has no test cells; there is nothing to evaluate on")
        t0 = time.perf_counter()
        trainer = finetune(prepared, model, chosen, checkpoint_dir=staging / "checkpoints", progress=progress)
        train_seconds, p, test = time.perf_counter() - t0, prepared.profile, prepared.datasets["test"]
        kwargs = {"normalize": prepared.normalize, "progress": progress, "tta": chosen.tta}
        cnn_proba = predict_proba(model, test, **kwargs)
        t0 = time.perf_counter()
        hybrid = fit_hybrid(prepared, model, chosen, progress=progress)
        hybrid_seconds = time.perf_counter() - t0
        thresholds = {"cnn": None, "hybrid": None}
        if chosen.threshold == "validation" and "val" in prepared.datasets:
            thresholds["hybrid"] = float(hybrid.threshold)
            thresholds["cnn"] = validation_threshold(prepared, predict_proba(model, prepared.datasets["val"], **kwargs))
        hybrid_proba = hybrid.predict_proba(test)
        metrics = {
            "run_card": {**prepared.card(), "recipe": chosen.name},
            "profile": p.to_dict(),
            "recipe": chosen.to_dict(),
            "split": split_record(prepared),
            "notes": prepared.notes,
            "history": trainer.history_,
            "cnn": evaluate_predictions(
                test.frame, cnn_proba, n_boot=p.n_boot, seed=p.seed, threshold=thresholds["cnn"]
            ),
            "hybrid": evaluate_predictions(
                test.frame, hybrid_proba, n_boot=p.n_boot, seed=p.seed, threshold=thresholds["hybrid"]
            ),
            "thresholds": thresholds,
            "xgb_evals": hybrid.evals_result_,
            "seconds": {"finetune": train_seconds, "hybrid": hybrid_seconds},
        }
        hybrid.save(staging / "model")
        write_json(staging / "history.json", {"history": trainer.history_}, default=_json_default)
        run = Run(staging, metrics, prepared, model, hybrid)
        if figures:
            metrics["figures"] = {name: path.name for name, path in make_figures(run).items()}
        metrics["seconds"]["total"] = time.perf_counter() - started
        write_json(staging / "metrics.json", metrics, default=_json_default)
    run.out = Path(out).expanduser().absolute()
    return run


def load_run(out, *, with_model: bool = False) -> Run:
    """A finished run from disk (its metrics; with ``with_model`` also the hybrid and its CNN)."""
    out = Path(out)
    if not (out / "metrics.json").is_file():
        raise AllkitError(f"{out / 'metrics.json'} does not exist; run `allkit reproduce --out {out}` first")
    run = Run(out, read_json(out / "metrics.json", AllkitError, f"; rerun `allkit reproduce --out {out}`"))
    if with_model:
        run.hybrid = HybridClassifier.load(out / "model")
        run.model = run.hybrid.cnn
    return run


def rebuild_prepared(run: Run, *, progress: bool = True) -> Prepared:
    """The data of a loaded run: same profile, data and seed, hence the same split, cache and datasets.
    The model is built from the run's own CNN file, so no ImageNet weights are downloaded."""
    if run.prepared is None:
        cnn = run.out / "model" / "cnn.pt"
        if not cnn.is_file():
            raise AllkitError(f"{cnn} is missing; the run in {run.out} has no saved model to rebuild its data for")
        prepared, _ = prepare(
            Profile(**run.metrics["profile"]),
            run.card["data"],
            test_data=run.card.get("test_data") or False,
            backbone=run.card["backbone"],
            weights=str(cnn),
            progress=progress,
        )
        prepared.weights, prepared.weights_note = run.card["weights"], run.card["weights_note"]
        run.prepared = prepared
    return run.prepared


def save_cnn(out: Path, prepared: Prepared, model: torch.nn.Module, history: list[dict], recipe=None) -> Path:
    """``allkit train``'s output: the fine-tuned CNN (state_dict) and what rebuilds its data split."""
    save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / CNN_FILE)
    write_json(
        out / TRAIN_FILE,
        {
            "run_card": prepared.card(),
            "profile": prepared.profile.to_dict(),
            "recipe": get_recipe(recipe).name,
            "split": split_record(prepared),
            "history": history,
        },
        default=_json_default,
    )
    return out / CNN_FILE


def cnn_inputs(folder) -> dict:
    """What ``allkit fit-hybrid`` reads from a CNN folder, as :func:`writing`'s ``inputs``: its weights, its
    record and checkpoints (so it can be refitted later), and the data it was trained on."""
    folder = Path(folder)
    inputs = {f"the CNN's {name}": folder / name for name in (CNN_FILE, TRAIN_FILE, "checkpoints")}
    try:
        inputs["its data"] = json.loads((folder / TRAIN_FILE).read_text())["run_card"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # load_cnn names the problem with the folder
    return inputs


def load_cnn(folder, *, progress: bool = True) -> tuple[Prepared, torch.nn.Module, Recipe]:
    """``(prepared, model, recipe)`` of a folder written by ``allkit train``."""
    folder = Path(folder)
    if not (folder / CNN_FILE).is_file() or not (folder / TRAIN_FILE).is_file():
        raise AllkitError(f"{folder} is not a folder written by `allkit train` (expected {CNN_FILE} and {TRAIN_FILE})")
    manifest = read_json(folder / TRAIN_FILE, AllkitError, "; rerun `allkit train`")
    try:
        profile, card = Profile(**manifest["profile"]), manifest["run_card"]
        data, backbone, recipe = card["data"], card["backbone"], get_recipe(manifest.get("recipe"))
    except (KeyError, TypeError, AllkitError) as err:
        raise AllkitError(
            f"{folder / TRAIN_FILE} has a missing or invalid value ({err}); rerun `allkit train`"
        ) from None
    prepared, model = prepare(
        profile,
        data,
        backbone=backbone,
        weights=str(folder / CNN_FILE),
        progress=progress,
        test_data=card.get("test_data") or False,
    )
    trained, now = manifest.get("split"), split_record(prepared)
    if trained is not None and trained["sha256"] != now["sha256"]:
        moved = {
            part: sorted(set(now["subjects"].get(part, [])) ^ set(people))
            for part, people in trained["subjects"].items()
        }
        raise AllkitError(
            f"the data under {data} changed since the CNN in {folder} was trained: the same split now gives other "
            f"cells (subjects that changed parts: {', '.join(f'{k}: {v}' for k, v in moved.items() if v) or 'none'}); a "
            "hybrid fitted on it could validate or test on cells the CNN was trained on. Train the CNN again"
        )
    return prepared, model, recipe


def folder_cells(hybrid: HybridClassifier, data, *, allow_unknown_subjects=False, progress=True):
    """``(cells, dataset)``: every labelled cell under ``data``, cached the way ``hybrid``'s training cells were."""
    pre = getattr(hybrid, "preprocessing_", None) or {}
    cells = load_cnmc(data, allow_unknown_subjects=allow_unknown_subjects)
    cache = build_cache(
        cells.frame, size=pre.get("size", IMAGE_SIZE), crop_ratio=pre.get("crop_ratio", CROP_RATIO), progress=progress
    )
    return cells, CellDataset(cache, cells.frame)


def evaluate_folder(model_dir, data, *, allow_unknown_subjects=False, progress=True) -> dict:
    """``allkit evaluate``: predict every labelled cell under ``data`` with a saved hybrid and score it."""
    perf.speed_up()
    hybrid = HybridClassifier.load(model_dir, progress=progress)
    cells, dataset = folder_cells(hybrid, data, allow_unknown_subjects=allow_unknown_subjects, progress=progress)
    proba = hybrid.predict_proba(dataset)  # ALL above the saved model's decision threshold:
    result = evaluate_predictions(cells.frame, proba, n_boot=1000, seed=0, threshold=float(hybrid.threshold))
    split = (getattr(hybrid, "provenance_", None) or {}).get("split") or {}
    seen = set(split.get("subjects", {}).get("train", [])) | set(split.get("subjects", {}).get("val", []))
    seen |= set((getattr(hybrid, "provenance_", None) or {}).get("fit_subjects", []))
    result["seen_subjects"] = sorted(seen & set(cells.frame["subject"].astype(str)))
    return {**result, "data": str(cells.root), "synthetic": cells.synthetic, "model": str(model_dir)}

"""The paper's whole method, step by step: data → fine-tune → features → XGBoost → evaluate → explain.

One path for everyone: ``allkit reproduce`` and the book's notebooks call these functions, so a number in
the book is the number the CLI prints. A finished run lives in a folder::

    DIR/metrics.json        everything measured, with the run card (data, device, backbone, weights)
    DIR/model/              the hybrid (CNN state_dict + XGBoost JSON + manifest), HybridClassifier.load
    DIR/history.json        per-epoch training curves
    DIR/*.png               the figures
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import allkit
from allkit.atomic import read_json, torch_save, write_json
from allkit.constants import IMAGE_SIZE
from allkit.data import CellDataset, build_cache, load_cnmc, make_split, resolve_data_root
from allkit.errors import AllkitError, ModelError
from allkit.profiles import Profile, get_profile
from allkit.transforms import DEFAULT_CROP_RATIO

RUNS_DIR = Path(__file__).resolve().parents[1] / "runs"


# ---------------------------------------------------------------------------------------------- run card


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------- steps


@dataclass
class Prepared:
    """Data, split, cache and datasets for one profile, plus the chosen backbone and weights."""

    profile: Profile
    data_root: Path
    data_source: str
    synthetic: bool
    split: object
    cache: object
    datasets: dict[str, CellDataset]
    backbone: str
    weights: str | None
    weights_note: str
    normalize: object
    device: torch.device
    notes: list[str] = field(default_factory=list)

    def card(self) -> dict:
        counts = {name: {"cells": len(ds), "ALL": int((ds.frame["label"] == 1).sum()),
                         "HEM": int((ds.frame["label"] == 0).sum()), "subjects": int(ds.frame["subject"].nunique())}
                  for name, ds in self.datasets.items()}
        return {
            "profile": self.profile.name,
            "data": str(self.data_root),
            "data_source": self.data_source,
            "synthetic": self.synthetic,
            "split": getattr(self.split, "protocol", None),
            "counts": counts,
            "image_size": self.profile.image_size,
            "backbone": self.backbone,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "normalize": self.normalize if isinstance(self.normalize, bool) else "backbone's own mean/std",
            "device": describe_device(self.device),
            "allkit": allkit.__version__,
            "commit": git_commit(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }


def _subset(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded subset of at most ``n`` cells keeping the class ratio and every subject present."""
    if n is None or len(frame) <= n:
        return frame.reset_index(drop=True)
    fraction = n / len(frame)
    parts = [g.sample(max(1, round(len(g) * fraction)), random_state=seed) for _, g in frame.groupby("subject")]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def choose_backbone(profile: Profile, backbone: str | None, weights: str | None):
    """Build the model, falling back to the offline Lite0 where ImageNet weights cannot be downloaded.

    Returns ``(model, backbone, weights, note)``.
    """
    from allkit.models import build_model

    name = backbone or profile.backbone
    chosen = weights if weights is not None else profile.weights
    if isinstance(chosen, str) and chosen.lower() in {"none", "random"}:
        chosen = None  # random initialisation, e.g. to show what ImageNet pretraining brings
    try:
        return build_model(name, chosen), name, chosen, f"{name} with {chosen or 'random'} weights"
    except ModelError as err:
        if backbone is not None or weights is not None or profile.fallback_backbone is None:
            raise
        fallback = profile.fallback_backbone
        note = (f"{name} {chosen} weights could not be loaded here (no internet?); using {fallback} with its "
                "packaged offline ImageNet weights instead")
        print(f"allkit: {note}. The error was: {err}", file=sys.stderr)
        return build_model(fallback, "offline"), fallback, "offline", note


def prepare(profile: Profile | str | None = None, data: str | os.PathLike | None = None, *,
            backbone: str | None = None, weights: str | None = None, device: str = "auto",
            progress: bool = True, split=None, init_seed: int | None = None):
    """Load and split the data, build the cache and datasets, build the model. Returns ``(Prepared, model)``.

    ``split``: a callable ``frame -> allkit.data.Split`` replacing the profile's split (e.g. the leaky
    by-image split that notebook 09 measures). ``init_seed`` (default: the profile's seed) seeds the
    initialisation of the new classification head."""
    from allkit.models import get_spec
    from allkit.perf import select_device

    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    root, source = resolve_data_root(data)
    cells = load_cnmc(root)
    if split is not None:
        split = split(cells.frame)
    else:
        by = profile.split if profile.split != "paper" or (cells.frame["fold"] == "prelim").any() else "subject"
        split = make_split(cells.frame, by, seed=profile.seed, val_size=profile.val_size,
                           test_size=profile.test_size)
    frames = {"train": _subset(split.train, profile.max_train_cells, profile.seed),
              "val": _subset(split.val, profile.max_eval_cells, profile.seed),
              "test": _subset(split.test, profile.max_eval_cells, profile.seed)}
    # The new 2-class head is initialised from torch's global RNG: seed it, or the same profile and seed
    # give a different fine-tune in every process (and the caller's RNG stream is left untouched).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(profile.seed if init_seed is None else int(init_seed))
        model, name, chosen, note = choose_backbone(profile, backbone, weights)
    spec = get_spec(name)
    notes = list(cells.notes)
    if spec.name == "inception_v3" and profile.image_size < spec.input_size:
        # Its auxiliary classifier only works at 299 px; smaller inputs fail inside torchvision.
        notes.append(f"inception_v3 needs {spec.input_size} px input: image_size {profile.image_size} -> "
                     f"{spec.input_size}")
        profile = profile.with_overrides(image_size=spec.input_size)
    everything = pd.concat(frames.values(), ignore_index=True)
    cache = build_cache(everything, size=profile.image_size, progress=progress)
    datasets = {name: CellDataset(cache, frame) for name, frame in frames.items() if len(frame)}
    normalize = (tuple(spec.mean), tuple(spec.std)) if profile.normalize else False
    if split.protocol != profile.split and profile.split != "auto":
        notes.append(f"profile asks for the {profile.split!r} split; the data has no preliminary test set, "
                     f"so a subject-wise split of what is present is used")
    prepared = Prepared(profile, Path(root), source, cells.synthetic, split, cache, datasets, name, chosen, note,
                        normalize, select_device(device), notes)
    return prepared, model


def finetune(prepared: Prepared, model: torch.nn.Module, out: Path | None = None, *, progress: bool = True,
             recipe=None):
    """Fine-tune the CNN with the paper's recipe (Adamax, lr 1e-3, batch 40) or ``recipe``
    (see :mod:`allkit.recipes`). Returns the Trainer."""
    return finetune_with(prepared, model, recipe, progress=progress,
                         checkpoint_dir=None if out is None else out / "checkpoints")


def finetune_with(prepared: Prepared, model: torch.nn.Module, recipe=None, *, seed: int | None = None,
                  progress: bool = True, checkpoint_dir: Path | None = None):
    """Fine-tune with a recipe (``None``: the paper's) at the profile's size, epochs and batch; ``seed``
    (default: the profile's) drives shuffling, augmentation and dropout. Returns the Trainer."""
    from allkit.recipes import get_recipe
    from allkit.train import Trainer

    p = prepared.profile
    chosen = get_recipe(recipe)
    kwargs = chosen.trainer_kwargs()
    if p.lr != kwargs["lr"] and chosen.name == "paper":
        kwargs["lr"] = p.lr  # a profile that sets its own learning rate keeps it under the paper's recipe
    if kwargs["keep_best"] and "val" not in prepared.datasets:
        kwargs["keep_best"] = False  # nothing to choose the best epoch on
    trainer = Trainer(epochs=p.epochs, batch_size=p.batch_size, seed=p.seed if seed is None else seed,
                      normalize=prepared.normalize, device=prepared.device, max_batches=p.max_batches,
                      progress=progress, checkpoint_dir=checkpoint_dir, **kwargs)
    trainer.fit(model, prepared.datasets["train"], prepared.datasets.get("val"))
    return trainer


def fit_hybrid(prepared: Prepared, model: torch.nn.Module, *, progress: bool = True, feature_source="features",
               recipe=None):
    """XGBoost (eta 0.35) on the fine-tuned CNN's pooled features; records error and AUC per round.

    ``recipe`` (default: the paper's) sets how the hybrid predicts: with the improved one, over the eight
    dihedral views, and ALL above the threshold with the best balanced accuracy on the validation cells
    (:func:`validation_threshold`). Both are parameters of the returned hybrid, so they are saved with it."""
    from allkit.hybrid import HybridClassifier
    from allkit.recipes import get_recipe

    p = prepared.profile
    chosen = get_recipe(recipe)
    hybrid = HybridClassifier(backbone=prepared.backbone, cnn=model, normalize=prepared.normalize, eta=p.xgb_eta,
                              n_estimators=p.xgb_estimators, batch_size=p.batch_size, device=prepared.device,
                              seed=p.seed, feature_source=feature_source, progress=progress, tta=chosen.tta)
    sets = [(name, prepared.datasets[name]) for name in ("train", "val") if name in prepared.datasets]
    hybrid.fit(prepared.datasets["train"], eval_sets=[("validation" if n == "val" else n, d) for n, d in sets])
    if chosen.threshold == "validation" and "val" in prepared.datasets:
        hybrid.set_params(threshold=validation_threshold(prepared, hybrid.predict_proba(prepared.datasets["val"])))
    return hybrid


def validation_threshold(prepared: Prepared, p_val: np.ndarray) -> float:
    """The threshold on P(ALL) with the best balanced accuracy on the validation cells
    (:func:`allkit.calibration.choose_threshold`), for probabilities ``p_val`` of those cells."""
    from allkit.calibration import choose_threshold

    return float(choose_threshold(prepared.datasets["val"].frame["label"].to_numpy(), p_val).threshold)


def evaluate_predictions(frame: pd.DataFrame, proba: np.ndarray, *, n_boot: int, seed: int,
                         threshold: float | None = None) -> dict:
    """Table 2 metrics, subject-bootstrap 95% intervals and patient-level diagnosis for one test set.
    ``threshold``: ALL where P(ALL) > threshold (default: the argmax)."""
    from allkit.metrics import classification_table, evaluate_with_ci, patient_level, patient_level_metrics

    y_true = frame["label"].to_numpy()
    score = proba[:, 1]
    y_pred = (proba.argmax(axis=1) if threshold is None else score > threshold).astype(int)
    subjects = frame["subject"].to_numpy()
    result = evaluate_with_ci(y_true, y_pred, subjects, y_score=score, n_boot=n_boot, seed=seed)
    result["table2"] = json.loads(classification_table(y_true, y_pred).to_json(orient="index"))
    patients = patient_level(y_true, score, subjects)
    result["patient_level"] = patient_level_metrics(patients)
    result["patients"] = json.loads(patients.to_json(orient="records"))
    return result


@dataclass
class Run:
    """A finished (or loaded) run: what ``reproduce`` wrote to ``out``."""

    out: Path
    metrics: dict
    prepared: Prepared | None = None
    model: torch.nn.Module | None = None
    hybrid: object | None = None
    trainer: object | None = None

    @property
    def card(self) -> dict:
        return self.metrics["run_card"]

    @property
    def history(self) -> list[dict]:
        return self.metrics["history"]


def _write_json_atomic(path: Path, payload: dict) -> None:
    write_json(path, payload, indent=2, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def make_figures(run: Run, *, gradcam_cells: int | None = None) -> dict[str, Path]:
    """Training curves, XGBoost curves, confusion matrix, sample grid and Grad-CAM grid as PNG in ``run.out``."""
    import matplotlib.pyplot as plt

    from allkit import plots

    figures = {}

    def save(name, fig):
        figures[name] = plots.save_figure(fig, run.out / f"{name}.png")
        plt.close(fig)

    card = run.card
    where = f"{card['backbone']}, {card['profile']} profile{', SYNTHETIC data' if card['synthetic'] else ''}"
    save("training_curves", plots.plot_training_curves(run.history, title=f"Fine-tuning ({where})"))
    save("xgb_curves", plots.plot_xgb_curves(run.metrics["xgb_evals"], title=f"XGBoost on CNN features ({where})"))
    save("confusion_matrix", plots.plot_confusion_matrix(np.array(run.metrics["hybrid"]["confusion_matrix"]),
                                                         title=f"Hybrid, test cells ({where})"))
    if run.prepared is not None and run.model is not None:
        test = run.prepared.datasets["test"]
        n = gradcam_cells or run.prepared.profile.n_gradcam
        picks = pd.concat([g.head(n) for _, g in test.frame.groupby("label")]).index.to_numpy()
        images = test.__getitems__(picks)[0]
        save("samples", plots.plot_sample_grid(images.permute(0, 2, 3, 1).numpy(),
                                               test.frame.loc[picks, "label"].to_numpy(), n_per_class=n))
        from allkit.explain import gradcam

        result = gradcam(run.model, run.prepared.backbone, images, target="true",
                         labels=test.frame.loc[picks, "label"].to_numpy(), normalize=run.prepared.normalize,
                         device=run.prepared.device)
        save("gradcam", result.plot())
    return figures


def with_recipe(profile: Profile | str | None, recipe) -> Profile:
    """The profile with the recipe's normalisation (when the recipe sets one)."""
    from allkit.recipes import get_recipe

    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    chosen = get_recipe(recipe)
    return profile if chosen.normalize is None else profile.with_overrides(normalize=chosen.normalize)


def reproduce(profile: Profile | str | None = None, data=None, *, out: str | os.PathLike | None = None,
              backbone: str | None = None, weights: str | None = None, device: str = "auto",
              progress: bool = True, figures: bool = True, recipe=None) -> Run:
    """The whole method; writes ``out/metrics.json``, ``out/model/`` and the figures. Returns the Run.

    ``recipe``: ``None``/``"paper"`` (the paper's fine-tune) or ``"improved"`` (:mod:`allkit.recipes`)."""
    from allkit.hybrid import cnn_predict_proba
    from allkit.recipes import get_recipe

    started = time.perf_counter()
    chosen = get_recipe(recipe)
    prepared, model = prepare(with_recipe(profile, chosen), data, backbone=backbone, weights=weights,
                              device=device, progress=progress)
    out = Path(out) if out is not None else RUNS_DIR / prepared.profile.name
    out.mkdir(parents=True, exist_ok=True)
    if "test" not in prepared.datasets:
        raise AllkitError("the split has no test cells; cannot evaluate")

    t0 = time.perf_counter()
    trainer = finetune(prepared, model, out, progress=progress, recipe=chosen)
    train_seconds = time.perf_counter() - t0
    test = prepared.datasets["test"]
    p = prepared.profile
    cnn_proba = cnn_predict_proba(model, test, batch_size=p.batch_size, normalize=prepared.normalize,
                                  device=prepared.device, progress=progress, tta=chosen.tta)

    t0 = time.perf_counter()
    hybrid = fit_hybrid(prepared, model, progress=progress, recipe=chosen)
    hybrid_seconds = time.perf_counter() - t0
    hybrid_proba = hybrid.predict_proba(test)
    thresholds = {"cnn": None, "hybrid": None}
    if chosen.threshold == "validation" and "val" in prepared.datasets:
        thresholds["hybrid"] = float(hybrid.threshold)
        val_cnn = cnn_predict_proba(model, prepared.datasets["val"], batch_size=p.batch_size,
                                    normalize=prepared.normalize, device=prepared.device, progress=progress,
                                    tta=chosen.tta)
        thresholds["cnn"] = validation_threshold(prepared, val_cnn)
    metrics = {
        "run_card": {**prepared.card(), "recipe": chosen.name},
        "profile": p.to_dict(),
        "recipe": chosen.to_dict(),
        "notes": prepared.notes,
        "history": trainer.history_,
        "cnn": evaluate_predictions(test.frame, cnn_proba, n_boot=p.n_boot, seed=p.seed,
                                    threshold=thresholds["cnn"]),
        "hybrid": evaluate_predictions(test.frame, hybrid_proba, n_boot=p.n_boot, seed=p.seed,
                                       threshold=thresholds["hybrid"]),
        "thresholds": thresholds,
        "xgb_evals": hybrid.evals_result_,
        "seconds": {"finetune": train_seconds, "hybrid": hybrid_seconds},
    }
    hybrid.save(out / "model")
    _write_json_atomic(out / "history.json", {"history": trainer.history_})
    run = Run(out, metrics, prepared, model, hybrid, trainer)
    if figures:
        run.metrics["figures"] = {k: str(v.name) for k, v in make_figures(run).items()}
    run.metrics["seconds"]["total"] = time.perf_counter() - started
    _write_json_atomic(out / "metrics.json", run.metrics)
    return run


def load_run(out: str | os.PathLike, *, with_model: bool = False) -> Run:
    """A finished run from disk (metrics; the hybrid too with ``with_model=True``)."""
    out = Path(out)
    path = out / "metrics.json"
    if not path.is_file():
        raise AllkitError(f"{path} does not exist; run `allkit reproduce --out {out}` first")
    run = Run(out, read_json(path, AllkitError, f"; rerun `allkit reproduce --out {out}`"))
    if with_model:
        from allkit.hybrid import HybridClassifier

        run.hybrid = HybridClassifier.load(out / "model")
        run.model = run.hybrid.cnn_
    return run


# ---------------------------------------------------------------------------------------------- CLI steps

CNN_FILE = "cnn.pt"
TRAIN_MANIFEST = "train.json"


def save_cnn(out: Path, prepared: Prepared, model: torch.nn.Module, history: list[dict], recipe=None) -> Path:
    """Write the fine-tuned CNN (state_dict) and what is needed to rebuild its data split."""
    from allkit.recipes import get_recipe

    torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / CNN_FILE)
    _write_json_atomic(out / TRAIN_MANIFEST, {"run_card": prepared.card(), "profile": prepared.profile.to_dict(),
                                              "recipe": get_recipe(recipe).name, "history": history})
    return out / CNN_FILE


def load_cnn(folder: str | os.PathLike, *, progress: bool = True):
    """``(prepared, model, recipe)`` of a folder written by ``allkit train``: the prepared data, the CNN and
    the :class:`allkit.recipes.Recipe` it was fine-tuned with."""
    from allkit.recipes import get_recipe

    folder = Path(folder)
    manifest_path = folder / TRAIN_MANIFEST
    if not (folder / CNN_FILE).is_file() or not manifest_path.is_file():
        raise AllkitError(f"{folder} is not a folder written by `allkit train` (expected {CNN_FILE} and "
                          f"{TRAIN_MANIFEST})")
    manifest = read_json(manifest_path, AllkitError, "; rerun `allkit train`")
    profile = Profile(**manifest["profile"])
    card = manifest["run_card"]
    prepared, model = prepare(profile, card["data"], backbone=card["backbone"], weights=str(folder / CNN_FILE),
                              progress=progress)
    return prepared, model, get_recipe(manifest.get("recipe"))


def fitted_preprocessing(hybrid) -> tuple[int, float]:
    """Image size and crop ratio of the cells a saved hybrid was fitted on (224 px and the default crop when
    it was fitted on feature arrays and does not know)."""
    pre = hybrid.preprocessing_ or {}
    return int(pre.get("size") or IMAGE_SIZE), float(pre.get("crop_ratio") or DEFAULT_CROP_RATIO)


def folder_cells(hybrid, data: str | os.PathLike, *, allow_unknown_subjects: bool = False, progress: bool = True):
    """``(cells, dataset)``: every labelled cell under ``data`` (C-NMC layout, :func:`allkit.data.load_cnmc`)
    and their dataset, cached the way ``hybrid``'s training cells were."""
    size, crop = fitted_preprocessing(hybrid)
    cells = load_cnmc(data, allow_unknown_subjects=allow_unknown_subjects)
    return cells, CellDataset(build_cache(cells.frame, size=size, crop_ratio=crop, progress=progress), cells.frame)


def evaluate_folder(model_dir: str | os.PathLike, data: str | os.PathLike, *,
                    allow_unknown_subjects: bool = False, progress: bool = True) -> dict:
    """Predict every labelled cell under ``data`` with a saved hybrid and score it (``allkit evaluate``)."""
    from allkit.hybrid import HybridClassifier
    from allkit.metrics import classification_table, evaluate

    hybrid = HybridClassifier.load(model_dir, progress=progress)
    cells, dataset = folder_cells(hybrid, data, allow_unknown_subjects=allow_unknown_subjects, progress=progress)
    proba = hybrid.predict_proba(dataset)
    y_true = cells.frame["label"].to_numpy()
    y_pred = (proba[:, 1] > float(hybrid.threshold)).astype(int)  # the saved model's decision threshold
    result = evaluate(y_true, y_pred, proba[:, 1], subjects=cells.frame["subject"].to_numpy())
    result["table2"] = json.loads(classification_table(y_true, y_pred).to_json(orient="index"))
    result["data"] = str(cells.root)
    result["synthetic"] = cells.synthetic
    result["model"] = str(model_dir)
    return result


def rebuild_prepared(run: Run, *, progress: bool = True) -> Prepared:
    """The data of a finished run, for a run loaded from disk (``run.prepared`` is None): same profile, data
    and seed, hence the same split, cache and datasets (``train``/``val``/``test``), backbone and
    normalisation. The run's own fine-tuned CNN file is what ``prepare`` builds the model from, so no
    ImageNet weights are downloaded; that model is discarded (``run.model`` already holds it). Sets and
    returns ``run.prepared``."""
    if run.prepared is not None:
        return run.prepared
    card = run.card
    cnn = run.out / "model" / CNN_FILE
    if not cnn.is_file():
        raise AllkitError(f"{cnn} is missing; the run in {run.out} has no saved model to rebuild its data for")
    prepared, _ = prepare(Profile(**run.metrics["profile"]), card["data"], backbone=card["backbone"],
                          weights=str(cnn), progress=progress)
    prepared.weights, prepared.weights_note = card["weights"], card["weights_note"]
    run.prepared = prepared
    return prepared

"""Controlled experiments: the same cells, split and seed, one choice changed at a time.

A :class:`Variant` names the choices (recipe, split, head, normalisation, class weights, training seed).
:func:`run_variant` fine-tunes it once and keeps what every later analysis needs on disk::

    RUNS/<profile>-experiments/<name>-<key>/cnn.pt        the fine-tuned CNN (state_dict)
    RUNS/<profile>-experiments/<name>-<key>/meta.json     variant, recipe, profile, run card, history (written last)
    RUNS/<profile>-experiments/<name>-<key>/outputs/      [features | logits] per split and view (.npy)

They sit beside the profile's run (``RUNS/<profile>/``), not inside it: ``allkit reproduce --overwrite``
replaces that whole folder, and hours of fine-tunes must not go with it. Finished fine-tunes in the
earlier place, ``RUNS/<profile>/experiments/``, are still found.

``key`` hashes everything the result depends on (variant, recipe, profile, data folder), so a changed
choice is a new experiment and a finished one is never recomputed. Outputs of extra views (the eight
views of :func:`allkit.transforms.dihedral`, the authors' random test-time views of
:class:`allkit.study.views.RandomViews`) are computed the first time they are asked for.

The notebooks ``09``–``12`` and ``allkit experiments`` call these functions; the training seed varies
the fine-tune only (shuffling, augmentation, dropout), never the split.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax

from allkit.errors import AllkitError, ConfigError
from allkit.files import atomic_file, read_json, save_torch, write_json
from allkit.hybrid import HybridClassifier
from allkit.metrics import evaluate_with_ci
from allkit.models import build_model
from allkit.study import workspace
from allkit.study.profiles import Profile, get_profile
from allkit.study.recipes import Recipe, get_recipe
from allkit.study.run import Prepared, finetune, prepare
from allkit.study.views import features_and_logits

FORMAT = 1
SPLITS = ("subject", "image")
HEADS = ("binary", "imagenet")
KINDS = ("plain", "random", "tta")


@dataclass(frozen=True)
class Variant:
    """One fine-tune. ``None`` fields take the recipe's or the profile's value.

    - ``split``: ``"subject"`` (no person on both sides) or ``"image"`` (the leaky split: cells of one
      person in train and test; same part sizes as the subject split).
    - ``head``: ``"binary"`` (a new 2-output head) or ``"imagenet"`` (the 1000-output ImageNet head kept,
      as the authors' code did; labels 0/1 are then ImageNet classes 0 and 1).
    - ``seed``: the training seed (default: the profile's).
    """

    name: str
    recipe: str = "paper"
    split: str = "subject"
    head: str = "binary"
    normalize: bool | None = None
    class_weight: str | None = None
    seed: int | None = None
    test: str = "default"  # "internal": test on people held out of the data even when ALLKIT_TEST_DATA is set

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError(f"variant {self.name!r}: split={self.split!r}; expected one of {SPLITS}")
        if self.head not in HEADS:
            raise ConfigError(f"variant {self.name!r}: head={self.head!r}; expected one of {HEADS}")
        if self.test not in ("default", "internal"):
            raise ConfigError(f"variant {self.name!r}: test={self.test!r}; expected 'default' or 'internal'")
        get_recipe(self.recipe)


def _resolved(variant: Variant, profile: Profile) -> tuple[Recipe, Profile, int]:
    recipe = get_recipe(variant.recipe)
    if variant.class_weight is not None:
        recipe = recipe.with_overrides(class_weight=variant.class_weight)
    normalize = variant.normalize
    if normalize is None:
        normalize = recipe.normalize if recipe.normalize is not None else profile.normalize
    prof = profile.with_overrides(normalize=normalize, split="image" if variant.split == "image" else profile.split)
    seed = profile.seed if variant.seed is None else int(variant.seed)
    return recipe, prof, seed


def _key(variant: Variant, recipe: Recipe, profile: Profile, seed: int, data: str) -> str:
    payload = {
        "format": FORMAT,
        # not the name, nor `test`: what the test part is enters through `data` (the folder tested on)
        "variant": {k: v for k, v in asdict(variant).items() if k not in ("name", "test")},
        "recipe": recipe.training_dict(),
        "profile": profile.to_dict(),
        "seed": seed,
        "data": data,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class VariantRun:
    """A finished fine-tune and lazy access to its outputs."""

    variant: Variant
    recipe: Recipe
    profile: Profile
    seed: int
    dir: Path
    meta: dict
    prepared: Prepared | None = None
    model: torch.nn.Module | None = None
    _hybrids: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ data and model
    @property
    def backbone(self) -> str:
        return self.meta["run_card"]["backbone"]

    @property
    def history(self) -> list[dict]:
        return self.meta["history"]

    @property
    def n_outputs(self) -> int:
        return 1000 if self.variant.head == "imagenet" else 2

    def ensure_loaded(self, progress: bool = False) -> "VariantRun":
        """Rebuild the data (same profile, data and seed: the same split and cells) and load the fine-tuned
        CNN from ``cnn.pt``; nothing is trained."""
        if self.prepared is None or self.model is None:
            card = self.meta["run_card"]
            self.prepared, _ = prepare(  # random weights: no download; the fine-tuned ones are loaded next
                self.profile,
                card["data"],
                backbone=self.backbone,
                weights="random",
                progress=progress,
                test_data=card.get("test_data") or False,
            )
            self.model = build_model(self.backbone, self.dir / "cnn.pt", num_classes=self.n_outputs).eval()
        return self

    def frame(self, split: str) -> pd.DataFrame:
        path = self.dir / "outputs" / f"{split}.frame.json"
        if path.is_file():
            return pd.read_json(path, orient="records", dtype={"subject": str})
        self.ensure_loaded()
        frame = self.prepared.datasets[split].frame[["path", "subject", "label"]].copy()
        frame["path"] = frame["path"].astype(str)
        with atomic_file(path, "w") as handle:
            handle.write(frame.to_json(orient="records"))
        return frame

    def labels(self, split: str) -> np.ndarray:
        return self.frame(split)["label"].to_numpy()

    # ------------------------------------------------------------------ raw outputs
    def outputs(self, split: str, view: str = "plain", *, progress: bool = False) -> np.ndarray:
        """``[features | logits]`` of ``split``'s cells: ``view`` is ``"plain"``, ``"random"`` (the authors'
        random test-time augmentation, seeded) or ``"d4-<i>"`` (view i of :func:`allkit.transforms.dihedral`)."""
        path = self.dir / "outputs" / f"{split}.{view}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        if view in ("plain", "random"):
            dihedral = 0
        elif view.startswith("d4-") and view[3:].isdigit() and 0 <= int(view[3:]) < 8:
            dihedral = int(view[3:])
        else:
            raise ConfigError(f"view {view!r}; expected 'plain', 'random' or 'd4-0' ... 'd4-7'")
        self.ensure_loaded()
        out = features_and_logits(
            self.model,
            self.backbone,
            self.prepared.datasets[split],
            view=dihedral,
            random_seed=self.seed if view == "random" else None,
            normalize=self.prepared.normalize,
            batch_size=self.profile.batch_size,
            device=self.prepared.device,
            progress=progress,
        )
        with atomic_file(path, "wb") as handle:
            np.save(handle, out, allow_pickle=False)
        return out

    def _views(self, kind: str) -> list[str]:
        if kind == "plain":
            return ["plain"]
        if kind == "random":
            return ["random"]
        if kind == "tta":
            return ["plain"] + [f"d4-{i}" for i in range(1, 8)]
        raise ConfigError(f"kind {kind!r}; expected one of {KINDS}")

    def features(self, split: str, view: str = "plain", *, progress: bool = False) -> np.ndarray:
        """The pooled features (the head's input) of :meth:`outputs`."""
        return self.outputs(split, view, progress=progress)[:, : -self.n_outputs]

    def logits(self, split: str, view: str = "plain", *, progress: bool = False) -> np.ndarray:
        """The head's outputs (2, or 1000 with the kept ImageNet head) of :meth:`outputs`."""
        return self.outputs(split, view, progress=progress)[:, -self.n_outputs :]

    # ------------------------------------------------------------------ probabilities
    def cnn_proba(self, split: str, kind: str = "plain", *, progress: bool = False) -> np.ndarray:
        """The CNN alone: ``[HEM, ALL]`` probabilities (softmax of the HEM and ALL outputs; with the kept
        ImageNet head, of its outputs 0 and 1), averaged over the views of ``kind``."""
        probas = [
            softmax(self.logits(split, v, progress=progress)[:, :2].astype(np.float64), axis=1)
            for v in self._views(kind)
        ]
        return np.mean(probas, axis=0).astype(np.float32)

    def hybrid(self, source: str = "features", xgb_params: dict | None = None):
        """XGBoost (the profile's eta and rounds) fitted on the training cells' plain ``source``
        (``"features"`` or ``"logits"``) of this CNN."""
        key = (source, json.dumps(xgb_params or {}, sort_keys=True))
        if key not in self._hybrids:
            self.ensure_loaded()
            X = self.features("train") if source == "features" else self.logits("train")
            p = self.profile
            hybrid = HybridClassifier(
                backbone=self.backbone,
                cnn=self.model,
                feature_source=source,
                normalize=self.prepared.normalize,
                eta=p.xgb_eta,
                n_estimators=p.xgb_estimators,
                seed=self.seed,
                xgb_params=xgb_params,
                device="cpu",
                progress=False,
            )
            self._hybrids[key] = hybrid.fit(X, self.labels("train"))
        return self._hybrids[key]

    def hybrid_proba(
        self,
        split: str,
        kind: str = "plain",
        *,
        source: str = "features",
        xgb_params: dict | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """The hybrid's ``[HEM, ALL]`` probabilities, averaged over the views of ``kind``."""
        hybrid = self.hybrid(source, xgb_params)
        probas = []
        for v in self._views(kind):
            outputs = self.features if source == "features" else self.logits
            probas.append(hybrid.predict_proba(outputs(split, v, progress=progress)))
        return np.mean(probas, axis=0).astype(np.float32)


def experiments_dir(runs_dir: Path, profile: Profile) -> Path:
    """Where the profile's fine-tunes are kept: beside its run, so that replacing the run keeps them."""
    return Path(runs_dir) / f"{profile.name}-experiments"


def run_variant(
    variant: Variant,
    profile: Profile | str | None = None,
    data=None,
    *,
    runs_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> VariantRun:
    """Fine-tune ``variant`` (or load it if this exact experiment is already on disk). ``runs_dir``:
    default :func:`allkit.study.workspace.runs_dir`."""
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    recipe, prof, seed = _resolved(variant, profile)
    root, _ = workspace.data_root(data)
    # ALLKIT_TEST_DATA: the test part is other people's cells, unless the variant keeps its test inside the data
    # (test="internal", and the by-image split, which measures leakage within one data set)
    inside = variant.test == "internal" or variant.split == "image"
    test_root = None if inside else workspace.test_data_root()
    key = _key(variant, recipe, prof, seed, str(root) if test_root is None else f"{root} | test: {test_root}")
    runs = Path(runs_dir or workspace.runs_dir())
    base = experiments_dir(runs, profile)
    done = [
        f
        for folder in (base, runs / profile.name / "experiments")  # the second: where earlier versions kept them
        for f in sorted(folder.glob(f"*-{key[:10]}"))
        if (f / "meta.json").is_file() and (f / "cnn.pt").is_file()
    ]
    if done:  # this very fine-tune, perhaps under another name (e.g. "paper" before the external test set)
        meta = read_json(done[0] / "meta.json", AllkitError, f"; delete {done[0]} to run the variant again")
        return VariantRun(variant, recipe, prof, seed, done[0], meta)
    folder = base / f"{variant.name}-{key[:10]}"
    meta_path = folder / "meta.json"

    prepared, model = prepare(prof, root, progress=progress, init_seed=seed, test_data=test_root or False)
    if variant.head == "imagenet":
        model = build_model(prepared.backbone, prepared.weights, num_classes=1000)
    trainer = finetune(prepared, model, recipe, seed=seed, progress=progress)
    save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "cnn.pt")
    meta = {
        "variant": asdict(variant),
        "recipe": recipe.to_dict(),
        "profile": prof.to_dict(),
        "seed": seed,
        "key": key,
        "run_card": prepared.card(),
        "notes": prepared.notes,
        "history": trainer.history_,
        "best_epoch": trainer.best_epoch_,
    }
    write_json(meta_path, meta, default=str)
    run = VariantRun(variant, recipe, prof, seed, folder, meta, prepared, model.eval())
    for split_name in ("train", "val", "test"):  # what every analysis needs, while the model is loaded
        run.frame(split_name)
        run.outputs(split_name, "plain", progress=progress)
    return run


# ---------------------------------------------------------------------------------------------- the study


def study_variants(seeds=(42,)) -> list[Variant]:
    """Every fine-tune the book's notebooks 09-11 use (``seeds``: the paper and improved recipes' seeds)."""
    variants = [
        Variant("paper"),
        Variant("improved", recipe="improved"),
        Variant("authors-head", head="imagenet"),
        Variant("no-normalization", normalize=False),
        Variant("subject-internal", test="internal"),
        Variant("image-split", split="image"),
        Variant("class-weighted", class_weight="balanced"),
    ]
    for seed in seeds[1:]:
        variants += [
            Variant(f"paper-seed{seed}", seed=seed),
            Variant(f"improved-seed{seed}", recipe="improved", seed=seed),
        ]
    return variants


def score(frame: pd.DataFrame, proba: np.ndarray, *, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy, weighted F1 and ROC AUC with 95% subject-bootstrap intervals (ALL when p > threshold)."""
    p_all = np.asarray(proba)[:, 1] if np.ndim(proba) == 2 else np.asarray(proba)
    y_pred = (p_all > threshold).astype(int)
    return evaluate_with_ci(
        frame["label"].to_numpy(), y_pred, frame["subject"].to_numpy(), y_score=p_all, n_boot=n_boot, seed=seed
    )


def score_row(name: str, frame: pd.DataFrame, proba: np.ndarray, **kwargs) -> dict:
    """One table row: ``name``, accuracy, weighted F1, AUC and their intervals, as numbers."""
    result = score(frame, proba, **kwargs)
    row = {"setting": name}
    for metric in ("accuracy", "weighted_f1", "roc_auc"):
        ci = result["ci"].get(metric) or {}
        row[metric] = result[metric]
        row[f"{metric}_low"] = ci.get("low")
        row[f"{metric}_high"] = ci.get("high")
    row["n"] = result["n"]
    return row


def format_rows(rows: list[dict], decimals: int = 3) -> pd.DataFrame:
    """Rows of :func:`score_row` as a display table: ``0.452 [0.315, 0.541]`` per metric."""

    def cell(row, metric):
        value, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        if low is None or high is None:
            return f"{value:.{decimals}f}"
        return f"{value:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"

    table = pd.DataFrame(
        {
            "setting": [r["setting"] for r in rows],
            "accuracy [95% CI]": [cell(r, "accuracy") for r in rows],
            "weighted F1 [95% CI]": [cell(r, "weighted_f1") for r in rows],
            "ROC AUC [95% CI]": [cell(r, "roc_auc") for r in rows],
            "cells": [r["n"] for r in rows],
        }
    )
    return table.set_index("setting")

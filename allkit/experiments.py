"""Controlled experiments: the same cells, split and seed, one choice changed at a time.

A :class:`Variant` names the choices (recipe, split, head, normalisation, class weights, training seed).
:func:`run_variant` fine-tunes it once and keeps what every later analysis needs on disk::

    RUNS/<profile>/experiments/<name>-<key>/cnn.pt        the fine-tuned CNN (state_dict)
    RUNS/<profile>/experiments/<name>-<key>/meta.json     variant, recipe, profile, run card, history (written last)
    RUNS/<profile>/experiments/<name>-<key>/outputs/      [features | logits] per split and view (.npy)

``key`` hashes everything the result depends on (variant, recipe, profile, data folder), so a changed
choice is a new experiment and a finished one is never recomputed. Outputs of extra views (the eight
dihedral views, the authors' random test-time views) are computed the first time they are asked for.

The notebooks ``09``–``11`` and ``allkit experiments`` call these functions; the training seed varies
the fine-tune only (shuffling, augmentation, dropout), never the split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from allkit.atomic import atomic_file, read_json, torch_save, write_json
from allkit.errors import AllkitError
from allkit.profiles import Profile, get_profile
from allkit.recipes import Recipe, get_recipe

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

    def __post_init__(self):
        if self.split not in SPLITS:
            raise AllkitError(f"variant {self.name!r}: split={self.split!r}; expected one of {SPLITS}")
        if self.head not in HEADS:
            raise AllkitError(f"variant {self.name!r}: head={self.head!r}; expected one of {HEADS}")
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
    payload = {"format": FORMAT, "variant": {k: v for k, v in asdict(variant).items() if k != "name"},
               "recipe": recipe.training_dict(), "profile": profile.to_dict(), "seed": seed, "data": data}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _image_split(profile: Profile):
    """The leaky by-image split with the subject split's part sizes, so only *how* cells are split differs."""
    from allkit.data import make_split
    from allkit.data.splits import split_cells

    def split(frame: pd.DataFrame):
        safe = make_split(frame, "subject", seed=profile.seed, val_size=profile.val_size,
                          test_size=profile.test_size)
        n = len(frame)
        return split_cells(frame, by="image", val_size=len(safe.val) / n, test_size=len(safe.test) / n,
                           seed=profile.seed, leaky=True)

    return split


@dataclass
class VariantRun:
    """A finished fine-tune and lazy access to its outputs."""

    variant: Variant
    recipe: Recipe
    profile: Profile
    seed: int
    dir: Path
    meta: dict
    prepared: object = None
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

    def _ensure_loaded(self, progress: bool = False) -> None:
        if self.prepared is not None and self.model is not None:
            return
        from allkit.models import build_model
        from allkit.pipeline import prepare

        split = _image_split(self.profile) if self.variant.split == "image" else None
        self.prepared, _ = prepare(self.profile, self.meta["run_card"]["data"], backbone=self.backbone,
                                   weights="random", progress=progress, split=split)
        model = build_model(self.backbone, None, num_classes=self.n_outputs)
        model.load_state_dict(torch.load(self.dir / "cnn.pt", map_location="cpu", weights_only=True))
        self.model = model.eval()

    def frame(self, split: str) -> pd.DataFrame:
        path = self.dir / "outputs" / f"{split}.frame.json"
        if path.is_file():
            return pd.read_json(path, orient="records", dtype={"subject": str})
        self._ensure_loaded()
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
        random test-time augmentation, seeded) or ``"d4-<i>"`` (dihedral view i of 8)."""
        from allkit.tta import extract

        path = self.dir / "outputs" / f"{split}.{view}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        self._ensure_loaded()
        dataset = self.prepared.datasets[split]
        kwargs = {"normalize": self.prepared.normalize, "batch_size": self.profile.batch_size,
                  "device": self.prepared.device, "progress": progress}
        if view == "plain":
            out = extract(self.model, self.backbone, dataset, **kwargs)
        elif view == "random":
            out = extract(self.model, self.backbone, dataset, random_seed=self.seed, **kwargs)
        elif view.startswith("d4-") and view[3:].isdigit() and 0 <= int(view[3:]) < 8:
            out = extract(self.model, self.backbone, dataset, view=int(view[3:]), **kwargs)
        else:
            raise AllkitError(f"view {view!r}; expected 'plain', 'random' or 'd4-0' ... 'd4-7'")
        path.parent.mkdir(parents=True, exist_ok=True)
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
        raise AllkitError(f"kind {kind!r}; expected one of {KINDS}")

    def _split_outputs(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return out[:, :-self.n_outputs], out[:, -self.n_outputs:]

    # ------------------------------------------------------------------ probabilities
    def cnn_proba(self, split: str, kind: str = "plain", *, progress: bool = False) -> np.ndarray:
        """The CNN alone: ``[HEM, ALL]`` probabilities (softmax of the HEM and ALL outputs; with the kept
        ImageNet head, of its outputs 0 and 1), averaged over the views of ``kind``."""
        from allkit.tta import softmax

        probas = [softmax(self._split_outputs(self.outputs(split, v, progress=progress))[1][:, :2])
                  for v in self._views(kind)]
        return np.mean(probas, axis=0).astype(np.float32)

    def hybrid(self, source: str = "features", xgb_params: dict | None = None):
        """XGBoost (the profile's eta and rounds) fitted on the training cells' plain ``source``
        (``"features"`` or ``"logits"``) of this CNN."""
        from allkit.hybrid import HybridClassifier

        key = (source, json.dumps(xgb_params or {}, sort_keys=True))
        if key not in self._hybrids:
            self._ensure_loaded()
            features, logits = self._split_outputs(self.outputs("train", "plain"))
            X = features if source == "features" else logits
            p = self.profile
            hybrid = HybridClassifier(backbone=self.backbone, cnn=self.model, feature_source=source,
                                      normalize=self.prepared.normalize, eta=p.xgb_eta,
                                      n_estimators=p.xgb_estimators, seed=self.seed, xgb_params=xgb_params,
                                      device="cpu", progress=False)
            self._hybrids[key] = hybrid.fit(X, self.labels("train"))
        return self._hybrids[key]

    def hybrid_proba(self, split: str, kind: str = "plain", *, source: str = "features",
                     xgb_params: dict | None = None, progress: bool = False) -> np.ndarray:
        """The hybrid's ``[HEM, ALL]`` probabilities, averaged over the views of ``kind``."""
        hybrid = self.hybrid(source, xgb_params)
        probas = []
        for v in self._views(kind):
            features, logits = self._split_outputs(self.outputs(split, v, progress=progress))
            probas.append(hybrid.predict_proba(features if source == "features" else logits))
        return np.mean(probas, axis=0).astype(np.float32)


def run_variant(variant: Variant, profile: Profile | str | None = None, data=None, *,
                runs_dir: str | os.PathLike | None = None, progress: bool = True) -> VariantRun:
    """Fine-tune ``variant`` (or load it if this exact experiment is already on disk)."""
    from allkit.data import resolve_data_root
    from allkit.models import build_model
    from allkit.pipeline import RUNS_DIR, finetune_with, prepare

    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    recipe, prof, seed = _resolved(variant, profile)
    root, _ = resolve_data_root(data)
    key = _key(variant, recipe, prof, seed, str(root))
    base = Path(runs_dir or os.environ.get("ALLKIT_RUNS") or RUNS_DIR) / profile.name / "experiments"
    folder = base / f"{variant.name}-{key[:10]}"
    meta_path = folder / "meta.json"
    if meta_path.is_file() and (folder / "cnn.pt").is_file():
        meta = read_json(meta_path, AllkitError, f"; delete {folder} to run the variant again")
        return VariantRun(variant, recipe, prof, seed, folder, meta)

    split = _image_split(prof) if variant.split == "image" else None
    prepared, model = prepare(prof, root, progress=progress, split=split, init_seed=seed)
    if variant.head == "imagenet":
        model = build_model(prepared.backbone, prepared.weights, num_classes=1000)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = finetune_with(prepared, model, recipe, seed=seed, progress=progress)
    torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "cnn.pt")
    meta = {"variant": asdict(variant), "recipe": recipe.to_dict(), "profile": prof.to_dict(), "seed": seed,
            "key": key, "run_card": prepared.card(), "notes": prepared.notes, "history": trainer.history_,
            "best_epoch": trainer.best_epoch_}
    write_json(meta_path, meta, indent=2, default=str)
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
        Variant("image-split", split="image"),
        Variant("class-weighted", class_weight="balanced"),
    ]
    for seed in seeds[1:]:
        variants += [Variant(f"paper-seed{seed}", seed=seed), Variant(f"improved-seed{seed}", recipe="improved",
                                                                      seed=seed)]
    return variants


def score(frame: pd.DataFrame, proba: np.ndarray, *, threshold: float = 0.5, n_boot: int = 1000,
          seed: int = 0) -> dict:
    """Accuracy, weighted F1 and ROC AUC with 95% subject-bootstrap intervals (ALL when p > threshold)."""
    from allkit.metrics import evaluate_with_ci

    p_all = np.asarray(proba)[:, 1] if np.ndim(proba) == 2 else np.asarray(proba)
    y_pred = (p_all > threshold).astype(int)
    return evaluate_with_ci(frame["label"].to_numpy(), y_pred, frame["subject"].to_numpy(), y_score=p_all,
                            n_boot=n_boot, seed=seed)


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

    table = pd.DataFrame({
        "setting": [r["setting"] for r in rows],
        "accuracy [95% CI]": [cell(r, "accuracy") for r in rows],
        "weighted F1 [95% CI]": [cell(r, "weighted_f1") for r in rows],
        "ROC AUC [95% CI]": [cell(r, "roc_auc") for r in rows],
        "cells": [r["n"] for r in rows],
    })
    return table.set_index("setting")

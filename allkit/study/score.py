"""One scorer for every table of the book and every command: :func:`score` gives, for one set of cells and their
P(ALL), accuracy, balanced accuracy, weighted F1 and ROC AUC with intervals from a bootstrap over people, the
per-class table (the paper's Table 2), the majority-class baseline and the figures per person."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from allkit import perf
from allkit.constants import CROP_RATIO, IMAGE_SIZE
from allkit.data import CellDataset, build_cache, load_cnmc
from allkit.hybrid import HybridClassifier
from allkit.metrics import bootstrap_ci, classification_table, evaluate_with_ci, patient_level, patient_level_metrics

METRICS = ("accuracy", "balanced_accuracy", "weighted_f1", "roc_auc")


def score(frame: pd.DataFrame, proba, *, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
    """Scores of one set of cells (``frame``: ``label``, ``subject``; ``proba``: ``[HEM, ALL]`` or P(ALL)),
    ALL where P(ALL) > ``threshold``: the scores of :func:`allkit.metrics.evaluate`, their 95% intervals under
    ``ci`` (a bootstrap over people), ``majority_baseline`` (always answering the larger class), the paper's
    Table 2 (``table2``), one diagnosis per person (``patient_level``: mean P(ALL) > ``threshold``), each
    person's share of cells called right (``patients``, averaged in ``subject_mean_accuracy``)."""
    p_all = np.asarray(proba)[:, 1] if np.ndim(proba) == 2 else np.asarray(proba)
    y_true, subjects = frame["label"].to_numpy(), frame["subject"].astype(str).to_numpy()
    y_pred = (p_all > threshold).astype(int)
    result = evaluate_with_ci(y_true, y_pred, subjects, y_score=p_all, n_boot=n_boot, seed=seed)
    result["ci"]["balanced_accuracy"] = bootstrap_ci(
        y_true, y_pred, subjects, "balanced_accuracy", n_boot=n_boot, seed=seed
    )
    result["threshold"] = float(threshold)
    result["majority_baseline"] = float(max(y_true.mean(), 1 - y_true.mean()))
    result["table2"] = json.loads(classification_table(y_true, y_pred).to_json(orient="index"))
    patients = patient_level(y_true, p_all, subjects, threshold=float(threshold))
    right = pd.Series(y_true == y_pred).groupby(subjects).mean()
    patients["accuracy"] = right.loc[patients["subject"]].to_numpy()
    result["patient_level"] = patient_level_metrics(patients)
    result["subject_mean_accuracy"] = float(patients["accuracy"].mean())
    result["patients"] = json.loads(patients.to_json(orient="records"))
    return result


def score_row(name: str, frame: pd.DataFrame, proba, **kwargs) -> dict:
    """One flat table row of :func:`score`: ``setting``, each of :data:`METRICS` with ``_low``/``_high``, the
    majority baseline, HEM recall, the mean over people of their share right, cells and people."""
    result = score(frame, proba, **kwargs)
    row = {"setting": name}
    for metric in METRICS:
        ci = result["ci"].get(metric) or {}
        row.update({metric: result[metric], f"{metric}_low": ci.get("low"), f"{metric}_high": ci.get("high")})
    row.update(
        majority_baseline=result["majority_baseline"],
        hem_recall=result["specificity"],
        person_mean_accuracy=result["subject_mean_accuracy"],
        n=result["n"],
        people=result["n_subjects"],
    )
    return row


def format_rows(rows: list[dict], metrics=("accuracy", "weighted_f1", "roc_auc"), decimals: int = 3) -> pd.DataFrame:
    """Rows of :func:`score_row` as a display table: ``0.452 [0.315, 0.541]`` per metric."""
    names = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "weighted_f1": "weighted F1",
             "roc_auc": "ROC AUC"}  # fmt: skip

    def cell(row, metric):
        value, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        if low is None or high is None:
            return f"{value:.{decimals}f}"
        return f"{value:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"

    table = pd.DataFrame({"setting": [r["setting"] for r in rows]})
    for metric in metrics:
        table[f"{names[metric]} [95% CI]"] = [cell(r, metric) for r in rows]
    table["cells"] = [r["n"] for r in rows]
    return table.set_index("setting")


def folder_cells(hybrid: HybridClassifier, data, *, allow_unknown_subjects=False, progress=True):
    """``(cells, dataset)``: every labelled cell under ``data``, cached the way ``hybrid``'s training cells were."""
    pre = getattr(hybrid, "preprocessing_", None) or {}
    cells = load_cnmc(data, allow_unknown_subjects=allow_unknown_subjects)
    cache = build_cache(
        cells.frame, size=pre.get("size", IMAGE_SIZE), crop_ratio=pre.get("crop_ratio", CROP_RATIO), progress=progress
    )
    return cells, CellDataset(cache, cells.frame)


def evaluate_folder(model_dir, data, *, allow_unknown_subjects=False, progress=True) -> dict:
    """``allkit evaluate``: predict every labelled cell under ``data`` with a saved hybrid and :func:`score` it at
    the saved model's decision threshold; ``seen_subjects``: people of ``data`` the model was trained or chosen on."""
    perf.speed_up()
    hybrid = HybridClassifier.load(model_dir, progress=progress)
    cells, dataset = folder_cells(hybrid, data, allow_unknown_subjects=allow_unknown_subjects, progress=progress)
    result = score(cells.frame, hybrid.predict_proba(dataset), n_boot=1000, seed=0, threshold=float(hybrid.threshold))
    provenance = getattr(hybrid, "provenance_", None) or {}
    subjects = (provenance.get("split") or {}).get("subjects", {})
    seen = set(subjects.get("train", [])) | set(subjects.get("val", [])) | set(provenance.get("fit_subjects", []))
    result["seen_subjects"] = sorted(seen & set(cells.frame["subject"].astype(str)))
    return {**result, "data": str(cells.root), "synthetic": cells.synthetic, "model": str(Path(model_dir))}

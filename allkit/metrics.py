"""Evaluation metrics for the HEM-vs-ALL classifier, in the layout of the paper's Table 2.

Everything here works on three aligned 1-D arrays, one entry per cell image:

* ``y_true`` / ``y_pred`` -- labels, **ALL (malignant) = 1, HEM (normal) = 0** (:mod:`allkit.constants`);
* ``y_score`` -- the predicted probability of ALL, in ``[0, 1]`` (a ``(n, 2)`` ``predict_proba`` array is
  accepted too: its column 1 is used);
* ``subjects`` -- the patient each cell came from.

Cells of one patient are not independent, so confidence intervals (:func:`bootstrap_ci`) resample
**subjects**, never cells, and :func:`patient_level` aggregates cell predictions to one decision per
patient. The scores themselves come from scikit-learn; this module only arranges, validates and
resamples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from allkit.constants import CLASS_NAMES, LABEL_ALL, LABEL_HEM
from allkit.errors import DataError

__all__ = [
    "BOOTSTRAP_METRICS",
    "classification_table",
    "evaluate",
    "bootstrap_ci",
    "evaluate_with_ci",
    "patient_level",
    "patient_level_metrics",
    "expected_calibration_error",
    "reliability_curve",
    "format_table2",
]

LABELS = [LABEL_HEM, LABEL_ALL]  # row/column order of every confusion matrix here: [HEM, ALL]
TABLE2_ROWS = [*CLASS_NAMES, "accuracy", "macro avg", "weighted avg"]
TABLE2_COLUMNS = ["precision", "recall", "f1-score", "support"]

#: Metrics :func:`bootstrap_ci` computes (vectorised) by name.
BOOTSTRAP_METRICS = ("accuracy", "weighted_f1", "roc_auc", "sensitivity", "specificity", "balanced_accuracy")


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------
def _as_1d(values: Any, name: str) -> np.ndarray:
    if values is None:
        raise DataError(f"{name} is None: expected a 1-D array with one entry per cell")
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise DataError(f"{name} is a scalar ({arr!r}): expected a 1-D array with one entry per cell")
    if arr.ndim != 1:
        raise DataError(f"{name} has shape {arr.shape}: expected a 1-D array with one entry per cell")
    if arr.size == 0:
        raise DataError(f"{name} is empty: expected at least one cell")
    return arr


def _check_labels(values: Any, name: str) -> np.ndarray:
    arr = _as_1d(values, name)
    if arr.dtype == bool:
        return arr.astype(int)
    if not np.issubdtype(arr.dtype, np.number):
        bad = sorted({str(v) for v in arr.tolist()} - {"0", "1"})[:5]
        raise DataError(
            f"{name} has non-numeric label(s) {bad}: expected integers 0 (HEM) or 1 (ALL); "
            "map class names with allkit.constants.CLASS_TO_LABEL"
        )
    bad_mask = ~np.isin(arr, LABELS)
    if bad_mask.any():
        bad = np.unique(arr[bad_mask])[:5].tolist()
        raise DataError(f"{name} has label(s) {bad}: expected only 0 (HEM) or 1 (ALL)")
    return arr.astype(int)


def _check_scores(values: Any, name: str = "y_score") -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 2:  # predict_proba output: column 1 is P(ALL)
        arr = arr[:, LABEL_ALL]
    arr = _as_1d(arr, name)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise DataError(f"{name} has dtype {arr.dtype}: expected float probabilities of ALL in [0, 1]")
    arr = arr.astype(float)
    if np.isnan(arr).any():
        raise DataError(
            f"{name} has {int(np.isnan(arr).sum())} NaN value(s): expected probabilities in [0, 1]"
        )
    if arr.min() < 0 or arr.max() > 1:
        raise DataError(
            f"{name} has values outside [0, 1] (min {arr.min():.4g}, max {arr.max():.4g}): expected the "
            "probability of ALL (apply a softmax/sigmoid to logits first)"
        )
    return arr


def _check_subjects(values: Any, name: str = "subjects") -> np.ndarray:
    arr = _as_1d(values, name)
    missing = pd.isna(arr)
    if missing.any():
        raise DataError(
            f"{name} has {int(missing.sum())} missing value(s): expected a subject id for every cell"
        )
    return arr


def _check_lengths(**arrays: np.ndarray | None) -> None:
    given = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(given.values())) > 1:
        (first, n_first), *rest = given.items()
        for key, n in rest:
            if n != n_first:
                raise DataError(f"{first} has {n_first} entries but {key} has {n}: expected equal lengths")


def _validate(y_true, y_pred=None, y_score=None, subjects=None):
    t = _check_labels(y_true, "y_true")
    p = None if y_pred is None else _check_labels(y_pred, "y_pred")
    s = None if y_score is None else _check_scores(y_score)
    g = None if subjects is None else _check_subjects(subjects)
    _check_lengths(y_true=t, y_pred=p, y_score=s, subjects=g)
    return t, p, s, g


# --------------------------------------------------------------------------------------------------
# point estimates
# --------------------------------------------------------------------------------------------------
def classification_table(y_true, y_pred) -> pd.DataFrame:
    """The paper's Table 2: per-class precision/recall/F1/support, accuracy, macro and weighted averages.

    Rows are ``HEM, ALL, accuracy, macro avg, weighted avg``; columns ``precision, recall, f1-score,
    support``. As in scikit-learn's text report, the accuracy row carries the accuracy in the
    ``f1-score`` column, the number of cells in ``support`` and NaN elsewhere.
    """
    t, p, _, _ = _validate(y_true, y_pred)
    report = classification_report(
        t, p, labels=LABELS, target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
    )
    rows = {}
    for name in TABLE2_ROWS:
        if name == "accuracy":
            rows[name] = {
                "precision": np.nan,
                "recall": np.nan,
                "f1-score": report["accuracy"],
                "support": len(t),
            }
        else:
            rows[name] = {col: report[name][col] for col in TABLE2_COLUMNS}
    df = pd.DataFrame.from_dict(rows, orient="index")[TABLE2_COLUMNS]
    df["support"] = df["support"].astype(int)
    df.index.name = "class"
    return df


def format_table2(df: pd.DataFrame, decimals: int = 2) -> str:
    """Markdown version of :func:`classification_table`, rounded like the paper (2 decimals).

    Support is printed as an integer; the empty cells of the accuracy row stay blank.
    """
    missing = [c for c in TABLE2_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"table is missing column(s) {missing}: expected {TABLE2_COLUMNS} (classification_table)"
        )
    header = "| | " + " | ".join(TABLE2_COLUMNS) + " |"
    align = "|:--|" + "|".join(["--:"] * len(TABLE2_COLUMNS)) + "|"
    lines = [header, align]
    for name, row in df[TABLE2_COLUMNS].iterrows():
        cells = []
        for col in TABLE2_COLUMNS:
            value = row[col]
            if pd.isna(value):
                cells.append("")
            elif col == "support":
                cells.append(str(int(value)))
            else:
                cells.append(f"{value:.{decimals}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(y_true, y_pred, y_score=None, subjects=None) -> dict:
    """Cell-level metrics as a JSON-serialisable dict of plain Python numbers.

    Keys: ``accuracy``, ``weighted_f1``, ``macro_f1``, ``balanced_accuracy``, ``sensitivity`` (recall of
    ALL), ``specificity`` (recall of HEM), ``n``, ``per_class`` (``{"HEM": {precision, recall, f1,
    support}, "ALL": {...}}``), ``confusion_matrix`` (2x2 list; rows true ``[HEM, ALL]``, columns
    predicted), ``roc_auc`` (``None`` unless ``y_score`` is given and both classes are present), and
    ``n_subjects`` when ``subjects`` is given.
    """
    t, p, s, g = _validate(y_true, y_pred, y_score, subjects)
    prec, rec, f1, sup = precision_recall_fscore_support(t, p, labels=LABELS, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(t)),
        "accuracy": float(accuracy_score(t, p)),
        "weighted_f1": float(f1_score(t, p, labels=LABELS, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(t, p, labels=LABELS, average="macro", zero_division=0)),
        "sensitivity": float(rec[LABEL_ALL]),
        "specificity": float(rec[LABEL_HEM]),
        "balanced_accuracy": float(np.mean(rec)),
        "per_class": {
            name: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(sup[i]),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
        "confusion_matrix": confusion_matrix(t, p, labels=LABELS).astype(int).tolist(),
        "roc_auc": None,
    }
    if s is not None and len(np.unique(t)) == 2:
        out["roc_auc"] = float(roc_auc_score(t, s))
    if g is not None:
        out["n_subjects"] = int(len(pd.unique(g)))
    return out


# --------------------------------------------------------------------------------------------------
# subject-level (cluster) bootstrap
# --------------------------------------------------------------------------------------------------
def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _from_confusion(counts: np.ndarray, metric: str) -> np.ndarray:
    """Metric per row of ``counts`` = ``[tn, fp, fn, tp]`` (rows = bootstrap replicates).

    Same definitions as scikit-learn with ``zero_division=0``.
    """
    tn, fp, fn, tp = (counts[:, i] for i in range(4))
    n = tn + fp + fn + tp
    sens = _safe_div(tp, tp + fn)
    spec = _safe_div(tn, tn + fp)
    if metric == "accuracy":
        return _safe_div(tp + tn, n)
    if metric == "sensitivity":
        return sens
    if metric == "specificity":
        return spec
    if metric == "balanced_accuracy":
        # sklearn averages the recalls of the classes present in y_true.
        present = (tp + fn > 0).astype(float) + (tn + fp > 0)
        return _safe_div(sens + spec, present)
    if metric == "weighted_f1":
        f1_all = _safe_div(2 * tp, 2 * tp + fp + fn)
        f1_hem = _safe_div(2 * tn, 2 * tn + fn + fp)
        return _safe_div(f1_all * (tp + fn) + f1_hem * (tn + fp), n)
    raise AssertionError(metric)  # pragma: no cover


def _auc_pair_matrix(t: np.ndarray, s: np.ndarray, idx: np.ndarray, n_sub: int) -> np.ndarray:
    """``U[a, b]`` = Mann-Whitney pair count between ALL cells of subject a and HEM cells of subject b.

    A pair scores 1 if the ALL cell has the higher score, 0.5 on a tie. With subject multiplicities
    ``m`` the resampled AUC is ``m @ U @ m / ((m @ n_all) * (m @ n_hem))``, exactly what
    ``roc_auc_score`` gives on the resampled cells.
    """
    pos = t == LABEL_ALL
    pos_scores, pos_idx = s[pos], idx[pos]
    u = np.zeros((n_sub, n_sub))
    for b in np.unique(idx[~pos]):
        neg = np.sort(s[(~pos) & (idx == b)])
        lo = np.searchsorted(neg, pos_scores, side="left")
        hi = np.searchsorted(neg, pos_scores, side="right")
        u[:, b] = np.bincount(pos_idx, weights=lo + 0.5 * (hi - lo), minlength=n_sub)
    return u


def _subject_strata(t: np.ndarray, idx: np.ndarray, n_sub: int, names: np.ndarray, stratify: bool):
    if not stratify:
        return [np.arange(n_sub)]
    n_all = np.bincount(idx, weights=t, minlength=n_sub)
    n_cells = np.bincount(idx, minlength=n_sub)
    mixed = (n_all > 0) & (n_all < n_cells)
    if mixed.any():
        bad = [str(x) for x in names[mixed][:5]]
        raise DataError(
            f"subject(s) {bad} have cells of both classes: a class-stratified subject bootstrap expects one "
            "class per subject (as in C-NMC); check the subject ids or pass stratify=False"
        )
    subject_label = (n_all > 0).astype(int)
    return [np.flatnonzero(subject_label == k) for k in LABELS if (subject_label == k).any()]


def _draw_multiplicities(strata: list[np.ndarray], n_sub: int, n_boot: int, rng: np.random.Generator):
    """``(n_boot, n_sub)`` matrix: how often each subject is drawn in each replicate.

    Within each stratum, as many subjects are drawn (with replacement) as the stratum holds.
    """
    m = np.zeros((n_boot, n_sub), dtype=np.int64)
    rows = np.arange(n_boot)[:, None]
    for members in strata:
        draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(m, (np.broadcast_to(rows, draws.shape), draws), 1)
    return m


def bootstrap_ci(
    y_true,
    y_pred,
    subjects,
    metric: str | Callable = "accuracy",
    y_score=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    stratify: bool = True,
    return_values: bool = False,
) -> dict:
    """Percentile confidence interval of a metric from a **subject-level (cluster) bootstrap**.

    Each replicate draws subjects with replacement and keeps *all* cells of every drawn subject (a
    subject drawn twice contributes its cells twice); cells are never resampled on their own, because
    cells of one patient are correlated and a cell-level bootstrap gives intervals that are far too
    narrow. With ``stratify=True`` (default) the draw is stratified by the class of the subject -- in
    C-NMC every subject is either an ALL patient or a healthy (HEM) donor -- so each replicate holds as
    many ALL subjects and as many HEM subjects as the data (possibly repeated), hence always both
    classes, and metrics such as ROC AUC or specificity are defined in every replicate. A subject with
    cells of both classes is then an error. ``stratify=False`` draws from all subjects at once.

    Parameters
    ----------
    metric
        One of :data:`BOOTSTRAP_METRICS` (computed vectorised from per-subject confusion counts, or
        per-subject-pair rank counts for ``roc_auc``), or a callable ``f(y_true, y_pred, y_score) ->
        float`` evaluated on every replicate's cells (``y_score`` is ``None`` when not given).
    alpha
        The interval is the ``[alpha/2, 1 - alpha/2]`` percentile interval (95 % by default).

    Returns
    -------
    dict with ``estimate`` (the metric on the full data), ``low``, ``high``, ``n_boot``, ``alpha``,
    ``metric``, ``n_subjects``, ``stratified`` and ``unit="subject"``; with ``return_values=True``
    also ``values``, the list of replicate values.
    """
    if subjects is None:
        raise DataError("subjects is None: expected a subject id per cell for the subject-level bootstrap")
    t, p, s, g = _validate(y_true, y_pred, y_score, subjects)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise DataError(f"n_boot={n_boot!r}: expected a positive integer")
    if not 0 < alpha < 1:
        raise DataError(f"alpha={alpha!r}: expected a number strictly between 0 and 1 (0.05 for 95 %)")
    if isinstance(metric, str):
        if metric not in BOOTSTRAP_METRICS:
            raise DataError(f"metric={metric!r}: expected one of {list(BOOTSTRAP_METRICS)} or a callable")
        if metric == "roc_auc":
            if s is None:
                raise DataError("metric='roc_auc' needs y_score (probability of ALL); got y_score=None")
            if len(np.unique(t)) < 2:
                raise DataError(
                    f"metric='roc_auc' needs both classes in y_true; got only {CLASS_NAMES[t[0]]}"
                )
        elif p is None:
            raise DataError(f"metric={metric!r} needs y_pred (predicted labels); got y_pred=None")
    elif not callable(metric):
        raise DataError(f"metric={metric!r}: expected one of {list(BOOTSTRAP_METRICS)} or a callable")

    names, idx = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    idx = idx.ravel()
    n_sub = len(names)
    strata = _subject_strata(t, idx, n_sub, names, stratify)
    rng = np.random.default_rng(seed)
    mult = _draw_multiplicities(strata, n_sub, int(n_boot), rng)
    ones = np.ones((1, n_sub), dtype=np.int64)

    if callable(metric):
        order = np.argsort(idx, kind="stable")
        cells_of = np.split(order, np.cumsum(np.bincount(idx, minlength=n_sub))[:-1])

        def on(cells):
            return float(metric(t[cells], None if p is None else p[cells], None if s is None else s[cells]))

        estimate = on(np.arange(len(t)))
        values = np.empty(int(n_boot))
        for r in range(int(n_boot)):
            cells = np.concatenate([cells_of[j] for j in np.repeat(np.arange(n_sub), mult[r])])
            values[r] = on(cells)
        name = getattr(metric, "__name__", "callable")
    elif metric == "roc_auc":
        u = _auc_pair_matrix(t, s, idx, n_sub)
        n_pos = np.bincount(idx, weights=(t == LABEL_ALL), minlength=n_sub)
        n_neg = np.bincount(idx, weights=(t == LABEL_HEM), minlength=n_sub)

        def auc(m):
            m = m.astype(float)
            return _safe_div(np.einsum("rs,st,rt->r", m, u, m), (m @ n_pos) * (m @ n_neg))

        estimate = float(auc(ones)[0])
        values = auc(mult)
        name = metric
    else:
        # per-subject confusion counts [tn, fp, fn, tp]; a replicate's counts are multiplicities @ these
        cell_cell = 2 * t + p  # 0 tn, 1 fp, 2 fn, 3 tp
        per_subject = np.zeros((n_sub, 4))
        np.add.at(per_subject, (idx, cell_cell), 1)
        estimate = float(_from_confusion(ones @ per_subject, metric)[0])
        values = _from_confusion(mult @ per_subject, metric)
        name = metric

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise DataError(f"metric {name!r} was undefined in every bootstrap replicate")
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    out = {
        "metric": name,
        "estimate": float(estimate),
        "low": float(low),
        "high": float(high),
        "n_boot": int(n_boot),
        "alpha": float(alpha),
        "n_subjects": int(n_sub),
        "stratified": bool(stratify),
        "unit": "subject",
    }
    if return_values:
        out["values"] = [float(v) for v in values]
    return out


def evaluate_with_ci(
    y_true,
    y_pred,
    subjects,
    y_score=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> dict:
    """:func:`evaluate` plus subject-bootstrap intervals under ``"ci"``.

    ``"ci"`` maps ``accuracy``, ``weighted_f1`` and ``roc_auc`` to :func:`bootstrap_ci` results
    (``roc_auc`` is ``None`` without ``y_score`` or with a single class).
    """
    out = evaluate(y_true, y_pred, y_score=y_score, subjects=subjects)
    kw = dict(n_boot=n_boot, alpha=alpha, seed=seed)
    ci: dict[str, Any] = {}
    for name in ("accuracy", "weighted_f1"):
        ci[name] = bootstrap_ci(y_true, y_pred, subjects, metric=name, y_score=y_score, **kw)
    if out["roc_auc"] is not None:
        ci["roc_auc"] = bootstrap_ci(y_true, y_pred, subjects, metric="roc_auc", y_score=y_score, **kw)
    else:
        ci["roc_auc"] = None
    out["ci"] = ci
    return out


# --------------------------------------------------------------------------------------------------
# patient-level aggregation
# --------------------------------------------------------------------------------------------------
PATIENT_COLUMNS = ["subject", "label", "n_cells", "mean_prob", "frac_pred_all", "pred"]


def patient_level(y_true, y_score, subjects, method: str = "mean", threshold: float = 0.5) -> pd.DataFrame:
    """One row per subject: the patient's label and a patient-level prediction from its cells.

    Columns: ``subject``, ``label`` (true label; every cell of a subject must share it), ``n_cells``,
    ``mean_prob`` (mean probability of ALL), ``frac_pred_all`` (fraction of cells with probability
    ``> threshold``, i.e. predicted ALL) and ``pred``:

    * ``method="mean"``: ALL when ``mean_prob > threshold``;
    * ``method="vote"``: ALL when more than half of the cells are predicted ALL (a tie gives HEM).

    ``>`` (not ``>=``) matches XGBoost's ``predict`` and ``argmax`` over two equal softmax outputs.
    Rows are sorted by subject; ``df.attrs`` records ``method`` and ``threshold``.
    """
    if method not in ("mean", "vote"):
        raise DataError(f"method={method!r}: expected 'mean' or 'vote'")
    if not 0 <= threshold <= 1:
        raise DataError(f"threshold={threshold!r}: expected a probability in [0, 1]")
    t, _, s, g = _validate(y_true, None, y_score, subjects)
    cells = pd.DataFrame({"subject": g, "label": t, "prob": s, "pred_all": (s > threshold).astype(float)})
    grouped = cells.groupby("subject", sort=True)
    n_labels = grouped["label"].nunique()
    mixed = n_labels[n_labels > 1].index.tolist()
    if mixed:
        raise DataError(
            f"subject(s) {[str(m) for m in mixed[:5]]} have cells labelled both HEM and ALL: expected one "
            "label per subject (a C-NMC subject is either an ALL patient or a healthy donor)"
        )
    df = grouped.agg(
        label=("label", "first"),
        n_cells=("label", "size"),
        mean_prob=("prob", "mean"),
        frac_pred_all=("pred_all", "mean"),
    ).reset_index()
    if method == "mean":
        df["pred"] = (df["mean_prob"] > threshold).astype(int)
    else:
        df["pred"] = (df["frac_pred_all"] > 0.5).astype(int)
    df["label"] = df["label"].astype(int)
    df["n_cells"] = df["n_cells"].astype(int)
    df = df[PATIENT_COLUMNS]
    df.attrs.update(method=method, threshold=float(threshold))
    return df


def patient_level_metrics(
    y_true, y_score=None, subjects=None, method: str = "mean", threshold: float = 0.5
) -> dict:
    """Accuracy and confusion matrix over subjects (one decision per patient).

    Pass the cell-level arrays (aggregated with :func:`patient_level`), or a DataFrame returned by
    :func:`patient_level` as the only argument. Returns ``n_subjects``, ``accuracy``,
    ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``confusion_matrix`` (rows true
    ``[HEM, ALL]``, columns predicted), ``method`` and ``threshold``.
    """
    if isinstance(y_true, pd.DataFrame):
        df = y_true
        missing = [c for c in ("label", "pred") if c not in df.columns]
        if missing:
            raise DataError(
                f"patient table is missing column(s) {missing}: expected the output of patient_level"
            )
        method = df.attrs.get("method", method)
        threshold = df.attrs.get("threshold", threshold)
    else:
        df = patient_level(y_true, y_score, subjects, method=method, threshold=threshold)
    t = df["label"].to_numpy(int)
    p = df["pred"].to_numpy(int)
    cm = confusion_matrix(t, p, labels=LABELS)
    rec = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    return {
        "n_subjects": int(len(df)),
        "accuracy": float(accuracy_score(t, p)),
        "balanced_accuracy": float(balanced_accuracy_score(t, p))
        if len(np.unique(t)) == 2
        else float(rec[t[0]]),
        "sensitivity": float(rec[LABEL_ALL]),
        "specificity": float(rec[LABEL_HEM]),
        "confusion_matrix": cm.astype(int).tolist(),
        "method": method,
        "threshold": float(threshold),
    }


# --------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------
def _calibration_bins(y_prob: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """Bin index of every probability, exactly as ``sklearn.calibration.calibration_curve`` bins."""
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(y_prob, np.linspace(0, 100, n_bins + 1))
    else:
        raise DataError(f"strategy={strategy!r}: expected 'uniform' or 'quantile'")
    return np.searchsorted(edges[1:-1], y_prob)


def _check_calibration_args(y_true, y_prob, n_bins):
    t, _, s, _ = _validate(y_true, None, y_prob)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise DataError(f"n_bins={n_bins!r}: expected a positive integer")
    return t, s


def reliability_curve(y_true, y_prob, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability-diagram points from ``sklearn.calibration.calibration_curve``.

    One row per non-empty bin: ``mean_predicted`` (mean probability of ALL in the bin),
    ``fraction_positive`` (observed fraction of ALL cells) and ``count`` (cells in the bin).
    """
    t, s = _check_calibration_args(y_true, y_prob, n_bins)
    bins = _calibration_bins(s, n_bins, strategy)
    prob_true, prob_pred = calibration_curve(t, s, n_bins=n_bins, strategy=strategy, pos_label=LABEL_ALL)
    counts = np.bincount(bins, minlength=n_bins)
    return pd.DataFrame(
        {"mean_predicted": prob_pred, "fraction_positive": prob_true, "count": counts[counts > 0].astype(int)}
    )


def expected_calibration_error(y_true, y_prob, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error of the probability of ALL.

    ``ECE = sum_b (n_b / n) * |fraction of ALL in bin b - mean predicted probability in bin b|`` over
    ``n_bins`` equal-width bins of ``[0, 1]`` (the bins of :func:`reliability_curve`). 0 is perfectly
    calibrated; over-confident models score higher.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    weights = curve["count"].to_numpy(float)
    gaps = np.abs(curve["fraction_positive"].to_numpy() - curve["mean_predicted"].to_numpy())
    return float(np.sum(weights * gaps) / weights.sum())

"""Scores of the HEM-vs-ALL classifier, laid out as the paper's Table 2, with honest intervals.

Inputs are aligned 1-D arrays, one entry per cell: ``y_true`` / ``y_pred`` (ALL = 1, HEM = 0), ``y_score``
(the probability of ALL; a ``predict_proba`` array is accepted too) and ``subjects`` (the person each cell
came from). Cells of one person are not independent, so intervals resample **subjects**, never cells
(:func:`bootstrap_ci`), and :func:`patient_level` makes one decision per person. The scores themselves
come from scikit-learn.
"""

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from allkit.constants import CLASS_NAMES, LABEL_ALL, LABEL_HEM
from allkit.errors import DataError

LABELS = [LABEL_HEM, LABEL_ALL]  # row and column order of every confusion matrix: [HEM, ALL]
BOOTSTRAP_METRICS = ("accuracy", "weighted_f1", "roc_auc", "sensitivity", "specificity", "balanced_accuracy")


def check_inputs(y_true, y_pred=None, y_score=None, subjects=None) -> tuple:
    """The inputs as checked 1-D arrays of one length (``None`` stays ``None``), or a :class:`DataError`."""
    out = []
    for name, values in (("y_true", y_true), ("y_pred", y_pred), ("y_score", y_score), ("subjects", subjects)):
        if values is None:
            out.append(None)
            continue
        arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
        if name == "y_score" and arr.ndim == 2 and arr.shape[1] == 2:
            arr = arr[:, LABEL_ALL]  # predict_proba output
        if arr.ndim != 1 or arr.size == 0:
            raise DataError(f"{name} has shape {arr.shape}; expected a non-empty 1-D array, one entry per cell")
        if name in ("y_true", "y_pred"):
            if arr.dtype == object or not np.isin(arr, LABELS).all():
                raise DataError(
                    f"{name} holds {sorted(set(arr.tolist()) - set(LABELS))[:5]}; expected 0 (HEM) or 1 (ALL)"
                )
            arr = arr.astype(int)
        elif name == "y_score":
            if arr.dtype.kind not in "fiu" or np.isnan(arr).any() or arr.min() < 0 or arr.max() > 1:
                raise DataError("y_score must hold probabilities of ALL in [0, 1] (no NaN); apply a softmax to logits")
            arr = arr.astype(float)
        elif pd.isna(arr).any():
            raise DataError(f"subjects has {int(pd.isna(arr).sum())} missing value(s); expected one id per cell")
        out.append(arr)
    lengths = {len(a) for a in out if a is not None}
    if len(lengths) > 1:
        raise DataError(f"the inputs have different lengths {sorted(lengths)}; expected one entry per cell in each")
    return tuple(out)


def classification_table(y_true, y_pred) -> pd.DataFrame:
    """The paper's Table 2: precision, recall, F1 and support per class, then accuracy, macro and weighted
    averages (the accuracy row holds the accuracy under ``f1-score``, as scikit-learn's report does)."""
    t, p, _, _ = check_inputs(y_true, y_pred)
    report = classification_report(t, p, labels=LABELS, target_names=CLASS_NAMES, output_dict=True, zero_division=0)
    report["accuracy"] = {"precision": np.nan, "recall": np.nan, "f1-score": report["accuracy"], "support": len(t)}
    table = pd.DataFrame(report).T.loc[[*CLASS_NAMES, "accuracy", "macro avg", "weighted avg"]]
    return table.astype({"support": int}).rename_axis("class")


def evaluate(y_true, y_pred, y_score=None, subjects=None) -> dict:
    """Cell-level scores as plain numbers: accuracy, weighted and macro F1, sensitivity (ALL recall),
    specificity (HEM recall), balanced accuracy, per-class precision/recall/F1, the confusion matrix
    (rows true [HEM, ALL]), ROC AUC (with ``y_score`` and both classes) and ``n_subjects``."""
    t, p, s, g = check_inputs(y_true, y_pred, y_score, subjects)
    precision, recall, f1, support = precision_recall_fscore_support(t, p, labels=LABELS, zero_division=0)
    cm = confusion_matrix(t, p, labels=LABELS)
    return {
        "n": len(t),
        "accuracy": float((t == p).mean()),
        "weighted_f1": float(np.average(f1, weights=support)) if support.sum() else 0.0,
        "macro_f1": float(f1.mean()),
        "sensitivity": float(recall[LABEL_ALL]),
        "specificity": float(recall[LABEL_HEM]),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
        "confusion_matrix": cm.tolist(),
        "roc_auc": float(roc_auc_score(t, s)) if s is not None and len(np.unique(t)) == 2 else None,
        **({"n_subjects": len(pd.unique(g))} if g is not None else {}),
    }


def _from_counts(counts: np.ndarray, metric: str) -> np.ndarray:
    """A metric from confusion counts ``[tn, fp, fn, tp]`` (one row per bootstrap draw), as scikit-learn
    computes it with ``zero_division=0``."""
    tn, fp, fn, tp = counts.T

    def div(a, b):
        return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)

    sens, spec = div(tp, tp + fn), div(tn, tn + fp)
    return {
        "accuracy": lambda: div(tp + tn, tn + fp + fn + tp),
        "sensitivity": lambda: sens,
        "specificity": lambda: spec,
        "balanced_accuracy": lambda: div(sens + spec, (tp + fn > 0).astype(float) + (tn + fp > 0)),
        "weighted_f1": lambda: div(
            div(2 * tp, 2 * tp + fp + fn) * (tp + fn) + div(2 * tn, 2 * tn + fn + fp) * (tn + fp), tn + fp + fn + tp
        ),
    }[metric]()


def bootstrap_ci(
    y_true,
    y_pred,
    subjects,
    metric="accuracy",
    y_score=None,
    *,
    n_boot=1000,
    alpha=0.05,
    seed=0,
    stratify=True,
    return_values=False,
) -> dict:
    """Percentile interval of ``metric`` (one of :data:`BOOTSTRAP_METRICS`) from a subject bootstrap.

    Every draw takes subjects with replacement and keeps all cells of each drawn subject. With ``stratify``
    (the default) ALL patients and healthy donors are drawn separately, as many of each as there are, so
    every draw holds both classes. Vectorised: a draw's confusion counts are its subject multiplicities
    times the per-subject counts; its AUC comes from per-subject-pair rank counts (Mann-Whitney)."""
    t, p, s, g = check_inputs(y_true, y_pred, y_score, subjects)
    if g is None or metric not in BOOTSTRAP_METRICS or (s if metric == "roc_auc" else p) is None:
        raise DataError(
            f"bootstrap_ci(metric={metric!r}) needs subjects and, for that metric, "
            f"{'y_score' if metric == 'roc_auc' else 'y_pred'}; metrics: {', '.join(BOOTSTRAP_METRICS)}"
        )
    if not (isinstance(n_boot, (int, np.integer)) and n_boot > 0 and 0 < alpha < 1):
        raise DataError(f"n_boot={n_boot!r}, alpha={alpha!r}; expected a positive integer and 0 < alpha < 1")
    names, idx = np.unique(g.astype(str), return_inverse=True)
    n_sub, rng = len(names), np.random.default_rng(seed)
    label_of = np.bincount(idx, weights=t, minlength=n_sub) / np.bincount(idx, minlength=n_sub)
    if stratify and ((label_of > 0) & (label_of < 1)).any():
        raise DataError(
            f"subject(s) {list(names[(label_of > 0) & (label_of < 1)][:5])} have cells of both classes; a "
            "stratified subject bootstrap expects one class per subject (pass stratify=False)"
        )
    strata = [np.flatnonzero(label_of == k) for k in LABELS] if stratify else [np.arange(n_sub)]
    draws = np.zeros((n_boot, n_sub))
    for members in (m for m in strata if len(m)):
        picked = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(draws, (np.arange(n_boot)[:, None], picked), 1)
    ones = np.ones((1, n_sub))
    if metric == "roc_auc":
        if len(np.unique(t)) < 2:
            raise DataError("roc_auc needs cells of both classes")
        pairs = np.zeros((n_sub, n_sub))  # pairs[a, b]: ALL cells of a scored above HEM cells of b (ties 1/2)
        for b in np.unique(idx[t == LABEL_HEM]):
            hem = np.sort(s[(t == LABEL_HEM) & (idx == b)])
            lo, hi = np.searchsorted(hem, s[t == LABEL_ALL], "left"), np.searchsorted(hem, s[t == LABEL_ALL], "right")
            pairs[:, b] = np.bincount(idx[t == LABEL_ALL], weights=lo + 0.5 * (hi - lo), minlength=n_sub)
        n_all, n_hem = np.bincount(idx, weights=t, minlength=n_sub), np.bincount(idx, weights=1 - t, minlength=n_sub)

        def score(m):
            return np.einsum("rs,st,rt->r", m, pairs, m) / np.maximum((m @ n_all) * (m @ n_hem), 1e-300)

    else:
        per_subject = np.zeros((n_sub, 4))
        np.add.at(per_subject, (idx, 2 * t + p), 1)  # 0 tn, 1 fp, 2 fn, 3 tp

        def score(m):
            return _from_counts(m @ per_subject, metric)

    values = score(draws)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    result = {
        "metric": metric,
        "estimate": float(score(ones)[0]),
        "low": float(low),
        "high": float(high),
        "n_boot": int(n_boot),
        "alpha": alpha,
        "n_subjects": n_sub,
        "stratified": stratify,
        "unit": "subject",
    }
    return {**result, "values": values.tolist()} if return_values else result


def evaluate_with_ci(y_true, y_pred, subjects, y_score=None, *, n_boot=1000, alpha=0.05, seed=0) -> dict:
    """:func:`evaluate`, plus subject-bootstrap intervals of accuracy, weighted F1 and ROC AUC under ``"ci"``."""
    out = evaluate(y_true, y_pred, y_score, subjects)
    kwargs = {"y_score": y_score, "n_boot": n_boot, "alpha": alpha, "seed": seed}
    out["ci"] = {
        name: bootstrap_ci(y_true, y_pred, subjects, name, **kwargs)
        for name in ("accuracy", "weighted_f1", "roc_auc")
        if name != "roc_auc" or out["roc_auc"] is not None
    }
    out["ci"].setdefault("roc_auc", None)
    return out


def patient_level(y_true, y_score, subjects, method: str = "mean", threshold: float = 0.5) -> pd.DataFrame:
    """One row per person: ``subject``, ``label``, ``n_cells``, ``mean_prob`` (mean P(ALL) of the person's
    cells), ``frac_pred_all`` (share of cells above ``threshold``) and the diagnosis ``pred``: ALL when the
    mean is above ``threshold`` (``method="mean"``) or most cells are called ALL (``"vote"``)."""
    if method not in ("mean", "vote") or not 0 <= threshold <= 1:
        raise DataError(f"method={method!r}, threshold={threshold!r}; expected 'mean' or 'vote' and a probability")
    t, _, s, g = check_inputs(y_true, None, y_score, subjects)
    cells = pd.DataFrame({"subject": g, "label": t, "prob": s, "pred_all": s > threshold})
    table = (
        cells.groupby("subject")
        .agg(
            label=("label", "first"),
            classes=("label", "nunique"),
            n_cells=("label", "size"),
            mean_prob=("prob", "mean"),
            frac_pred_all=("pred_all", "mean"),
        )
        .reset_index()
    )
    if (table["classes"] > 1).any():
        raise DataError(
            f"subject(s) {table.loc[table['classes'] > 1, 'subject'].tolist()[:5]} have cells of both "
            "classes; expected one diagnosis per person"
        )
    decided = table["mean_prob"] > threshold if method == "mean" else table["frac_pred_all"] > 0.5
    table = table.drop(columns="classes").assign(pred=decided.astype(int))
    table.attrs.update(method=method, threshold=float(threshold))
    return table


def patient_level_metrics(patients: pd.DataFrame) -> dict:
    """Scores over people (a table from :func:`patient_level`): accuracy, balanced accuracy, sensitivity,
    specificity, the confusion matrix (rows true [HEM, ALL]), the number of people."""
    scores = evaluate(patients["label"], patients["pred"])
    keep = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "confusion_matrix")
    return {"n_subjects": len(patients), **{k: scores[k] for k in keep}, **patients.attrs}

"""Figures of the paper (FIG 1, 6, 7, 8, Table 1) and of the extra analyses, with matplotlib + seaborn.

Conventions: every function returns the :class:`matplotlib.figure.Figure` it drew on, never calls
``plt.show()``, labels every axis and sets a title. Single-panel functions take ``ax=None`` (draw on a
new figure) or an existing Axes; multi-panel ones take ``axes=None`` or a sequence of Axes. Figures
are made with ``pyplot`` so notebooks show them automatically; in scripts, :func:`save_figure` then
``plt.close(fig)``. Colours: HEM blue, ALL red, everywhere (:mod:`allkit.study.figure_style`). The figures
of cells (FIG 1, Grad-CAM) are in :mod:`allkit.study.cell_plots` and can be imported from here too.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from sklearn.metrics import confusion_matrix

from allkit.constants import CLASS_NAMES, LABEL_ALL, LABEL_HEM
from allkit.errors import DataError
from allkit.files import atomic_file
from allkit.metrics import check_inputs
from allkit.study.calibration import expected_calibration_error, reliability_curve
from allkit.study.cell_plots import (
    plot_gradcam,
    plot_gradcam_comparison,
    plot_gradcam_grid,
    plot_gradcam_result,
    plot_sample_grid,
)
from allkit.study.figure_style import CLASS_COLORS, new_axes, new_axes_row

__all__ = [
    "CLASS_COLORS",
    "plot_training_curves",
    "plot_xgb_curves",
    "plot_confusion_matrix",
    "plot_sample_grid",
    "plot_gradcam_grid",
    "plot_backbone_comparison",
    "plot_reliability",
    "plot_patient_level",
    "plot_reliability_comparison",
    "plot_gradcam_comparison",
    "plot_gradcam",
    "plot_gradcam_result",
    "save_figure",
]


# --------------------------------------------------------------------------------------------------
# training curves (FIG 6) and XGBoost curves (FIG 8)
# --------------------------------------------------------------------------------------------------
def plot_training_curves(history, axes=None, title: str = "EfficientNet-B0 fine-tuning") -> Figure:
    """Loss and accuracy per epoch, train and (when present) validation -- the paper's FIG 6.

    ``history`` is a list of per-epoch dicts (or a DataFrame) with ``epoch``, ``train_loss``,
    ``train_acc`` and optionally ``val_loss``/``val_acc`` (``None``/missing when there was no
    validation set). Draws two panels: loss vs epoch, accuracy vs epoch.
    """
    df = pd.DataFrame(history) if not isinstance(history, pd.DataFrame) else history.copy()
    if df.empty:
        raise DataError("history is empty: expected one dict per epoch with epoch, train_loss, train_acc")
    missing = [k for k in ("epoch", "train_loss", "train_acc") if k not in df.columns]
    if missing:
        raise DataError(
            f"history is missing key(s) {missing}: expected per-epoch dicts with epoch, train_loss, "
            "train_acc (val_loss, val_acc optional)"
        )
    df = df.sort_values("epoch")
    fig, (ax_loss, ax_acc) = new_axes_row(axes, 2, (11, 4.2))
    for ax, key, label in ((ax_loss, "loss", "Cross-entropy loss"), (ax_acc, "acc", "Accuracy")):
        ax.plot(df["epoch"], df[f"train_{key}"].astype(float), marker="o", label="train")
        val_key = f"val_{key}"
        if val_key in df.columns:
            val = pd.to_numeric(df[val_key], errors="coerce")
            if val.notna().any():
                ax.plot(df["epoch"][val.notna()], val[val.notna()], marker="s", label="validation")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


_XGB_LABELS = {
    "error": "Classification error",
    "auc": "ROC AUC",
    "logloss": "Log loss",
    "merror": "Classification error",
    "mlogloss": "Log loss",
    "aucpr": "PR AUC",
}


def plot_xgb_curves(
    evals_result: Mapping[str, Mapping[str, Sequence[float]]],
    names: Mapping[str, str] | None = None,
    axes=None,
    title: str = "XGBoost on EfficientNet-B0 features",
) -> Figure:
    """Evaluation metrics vs boosting round from ``XGBClassifier.evals_result()`` -- the paper's FIG 8.

    ``evals_result`` looks like ``{"validation_0": {"error": [...], "auc": [...]}, "validation_1":
    {...}}``; ``names`` renames the sets, e.g. ``{"validation_0": "train", "validation_1":
    "validation"}``. One panel per metric (``error`` first, then ``auc``, then any others), one line
    per evaluation set.
    """
    if not evals_result:
        raise DataError("evals_result is empty: expected XGBoost's evals_result() dict (fit with eval_set=...)")
    names = dict(names or {})
    metrics: list[str] = []
    for set_name, per_metric in evals_result.items():
        if not isinstance(per_metric, Mapping) or not per_metric:
            raise DataError(
                f"evals_result[{set_name!r}] is {per_metric!r}: expected a dict metric -> list of values per round"
            )
        metrics += [m for m in per_metric if m not in metrics]
    order = {m: i for i, m in enumerate(("error", "merror", "auc"))}
    metrics.sort(key=lambda m: order.get(m, len(order)))
    fig, axs = new_axes_row(axes, len(metrics), (5.5 * len(metrics), 4.2))
    for ax, metric in zip(axs, metrics, strict=True):
        for set_name, per_metric in evals_result.items():
            if metric in per_metric:
                values = np.asarray(per_metric[metric], dtype=float)
                ax.plot(np.arange(1, len(values) + 1), values, label=names.get(set_name, set_name))
        label = _XGB_LABELS.get(metric, metric)
        ax.set_xlabel("Boosting round")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs boosting round")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------
# confusion matrix (FIG 7)
# --------------------------------------------------------------------------------------------------
def plot_confusion_matrix(
    cm_or_y_true,
    y_pred=None,
    normalize: str | None = None,
    ax=None,
    title: str = "Confusion matrix",
    cmap: str = "Blues",
) -> Figure:
    """Annotated confusion-matrix heatmap -- the paper's FIG 7.

    Pass a 2x2 matrix (rows true ``[HEM, ALL]``, columns predicted, as in
    :func:`allkit.metrics.evaluate`) or ``y_true, y_pred``. ``normalize="true"`` colours by the
    fraction of each true class and annotates ``fraction (count)``; ``None`` annotates counts.
    """
    if normalize not in (None, "true"):
        raise DataError(f"normalize={normalize!r}: expected None or 'true'")
    if y_pred is not None:
        t, p, _, _ = check_inputs(cm_or_y_true, y_pred)
        cm = confusion_matrix(t, p, labels=[LABEL_HEM, LABEL_ALL])
    else:
        cm = np.asarray(cm_or_y_true)
        if cm.shape != (2, 2):
            raise DataError(
                f"confusion matrix has shape {cm.shape}: expected 2x2 (rows true [HEM, ALL]) or pass y_true, y_pred"
            )
        if (cm < 0).any():
            raise DataError(f"confusion matrix has negative entries {cm.tolist()}: expected counts")
    counts = cm.astype(int) if np.allclose(cm, np.round(cm)) else cm
    if normalize == "true":
        rows = cm.sum(axis=1, keepdims=True).astype(float)
        values = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows != 0)
        annot = np.array([[f"{values[i, j]:.2f}\n({counts[i, j]})" for j in range(2)] for i in range(2)])
        cbar_label = "Fraction of true class"
    else:
        values = cm
        annot = np.array([[f"{counts[i, j]}" for j in range(2)] for i in range(2)])
        cbar_label = "Number of cells"
    fig, ax = new_axes(ax, figsize=(5, 4.2))
    sns.heatmap(
        values,
        annot=annot,
        fmt="",
        cmap=cmap,
        square=True,
        cbar_kws={"label": cbar_label},
        xticklabels=list(CLASS_NAMES),
        yticklabels=list(CLASS_NAMES),
        vmin=0,
        vmax=1 if normalize == "true" else None,
        ax=ax,
    )
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title if normalize is None else f"{title} (normalised by true class)")
    return fig


# --------------------------------------------------------------------------------------------------
# comparisons and diagnostics
# --------------------------------------------------------------------------------------------------
def plot_backbone_comparison(
    df: pd.DataFrame,
    metric: str = "accuracy",
    name_col: str = "backbone",
    ax=None,
    title: str = "Backbone comparison",
) -> Figure:
    """Bar chart of a metric per backbone -- the paper's Table 1 as a figure.

    ``df`` has one row per backbone: a ``backbone`` column (or the index) and a ``metric`` column;
    when ``low`` and ``high`` columns exist they are drawn as asymmetric error bars (e.g. the
    subject-bootstrap CI from :func:`allkit.metrics.bootstrap_ci`). Bar values are written on top.
    """
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise DataError("df is empty or not a DataFrame: expected one row per backbone")
    if metric not in df.columns:
        raise DataError(f"df has no {metric!r} column (columns: {list(df.columns)}): expected {metric!r}")
    names = df[name_col].astype(str).tolist() if name_col in df.columns else [str(i) for i in df.index]
    values = df[metric].to_numpy(float)
    yerr = None
    if {"low", "high"} <= set(df.columns):
        low = df["low"].to_numpy(float)
        high = df["high"].to_numpy(float)
        yerr = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
    fig, ax = new_axes(ax, figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    palette = sns.color_palette("deep", len(names))
    bars = ax.bar(names, values, yerr=yerr, capsize=4 if yerr is not None else 0, color=palette)
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=3, fontsize=8)
    ax.set_xlabel("Backbone")
    ax.set_ylabel(metric.replace("_", " ").capitalize())
    ax.set_title(title + (" (error bars: CI)" if yerr is not None else ""))
    top = float(np.nanmax(values if yerr is None else values + yerr[1]))
    ax.set_ylim(0, max(1.0, top) * 1.08)
    ax.tick_params(axis="x", rotation=30 if len(names) > 4 else 0)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_reliability(
    y_true, y_prob, n_bins: int = 10, strategy: str = "uniform", ax=None, title: str = "Reliability diagram"
) -> Figure:
    """Reliability diagram of the probability of ALL, with the diagonal of perfect calibration.

    Points come from :func:`allkit.study.calibration.reliability_curve`; the title gives the ECE.
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    ece = expected_calibration_error(y_true, y_prob, n_bins=n_bins, strategy=strategy)
    fig, ax = new_axes(ax, figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(curve["mean_predicted"], curve["fraction_positive"], marker="o", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Mean predicted probability of ALL")
    ax.set_ylabel("Observed fraction of ALL")
    ax.set_title(f"{title} (ECE = {ece:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def plot_patient_level(
    df: pd.DataFrame,
    value: str = "mean_prob",
    threshold: float | None = None,
    ax=None,
    title: str = "Patient-level predictions",
) -> Figure:
    """One bar per subject: its mean probability of ALL (or ``value="frac_pred_all"``), coloured by
    the subject's true class, sorted by value, with the decision threshold as a dashed line.

    ``df`` is the output of :func:`allkit.metrics.patient_level`; ``threshold`` defaults to the one
    recorded there (``df.attrs``), else 0.5 (0.5 for ``frac_pred_all``, the majority vote).
    """
    missing = [c for c in ("subject", "label", value) if c not in df.columns]
    if missing:
        raise DataError(f"df is missing column(s) {missing}: expected the output of allkit.metrics.patient_level")
    if df.empty:
        raise DataError("df is empty: expected one row per subject")
    if threshold is None:
        threshold = 0.5 if value == "frac_pred_all" else float(df.attrs.get("threshold", 0.5))
    d = df.sort_values(value).reset_index(drop=True)
    fig, ax = new_axes(ax, figsize=(max(6.0, 0.3 * len(d) + 2), 4.2))
    colors = [CLASS_COLORS[int(v)] for v in d["label"]]
    ax.bar(np.arange(len(d)), d[value].to_numpy(float), color=colors)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(d)))
    ax.set_xticklabels(d["subject"].astype(str), rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Subject (sorted)")
    ax.set_ylabel("Mean probability of ALL" if value == "mean_prob" else "Fraction of cells predicted ALL")
    ax.set_title(title)
    handles = [Patch(color=CLASS_COLORS[k], label=f"true {CLASS_NAMES[k]}") for k in (LABEL_HEM, LABEL_ALL)]
    handles.append(Line2D([0], [0], color="black", linestyle="--", label=f"threshold {threshold:g}"))
    ax.legend(handles=handles, loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` atomically: to a temporary file in the same folder, then ``os.replace``.

    The format follows the suffix (``.png`` by default -- a path without a suffix gets ``.png``);
    parent folders are created. A reader never sees a half-written file, and a failed save leaves no
    temporary file behind. Returns the final path. The figure is not closed.
    """
    if not isinstance(fig, Figure):
        raise DataError(f"fig is {type(fig).__name__}: expected a matplotlib Figure")
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    fmt = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise DataError(f"{path}: format {fmt!r} is not supported: expected one of {sorted(supported)}")
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=dpi)
    return path


# --------------------------------------------------------------------------------------------------
# calibration: several probability sets on one reliability diagram
# --------------------------------------------------------------------------------------------------
def plot_reliability_comparison(
    y_true,
    probas: Mapping[str, Any],
    n_bins: int = 10,
    strategy: str = "uniform",
    ax=None,
    title: str = "Reliability before and after calibration",
) -> Figure:
    """One reliability curve per entry of ``probas`` (``{name: probability of ALL}``, e.g. before, Platt,
    isotonic) on the same cells ``y_true``, with the diagonal of perfect calibration; each legend entry
    gives that curve's ECE. Marker area grows with the number of cells in the bin, so a point resting on
    three cells is seen to weigh less than one resting on three hundred.
    """
    if not isinstance(probas, Mapping) or not probas:
        raise DataError("probas must be a non-empty mapping {name: probabilities of ALL}")
    fig, ax = new_axes(ax, figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    palette = sns.color_palette("deep", len(probas))
    for color, (name, prob) in zip(palette, probas.items(), strict=True):
        curve = reliability_curve(y_true, prob, n_bins=n_bins, strategy=strategy)
        ece = expected_calibration_error(y_true, prob, n_bins=n_bins, strategy=strategy)
        ax.plot(curve["mean_predicted"], curve["fraction_positive"], color=color, label=f"{name} (ECE {ece:.3f})")
        sizes = 15 + 185 * curve["count"].to_numpy(float) / curve["count"].max()
        ax.scatter(
            curve["mean_predicted"],
            curve["fraction_positive"],
            s=sizes,
            color=color,
            alpha=0.7,
            edgecolors="white",
            zorder=3,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Mean predicted probability of ALL")
    ax.set_ylabel("Observed fraction of ALL")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def save_run_figures(run) -> dict[str, Path]:
    """A run's training curves, XGBoost curves, confusion matrix, sample grid and Grad-CAM grid, as PNG in its
    folder (``run``: an :class:`allkit.study.store.Run`)."""
    card, metrics = run.card, run.metrics
    where = f"{card['backbone']}, {card['profile']} profile{', SYNTHETIC data' if card['synthetic'] else ''}"
    figures = {
        "training_curves": plot_training_curves(run.history, title=f"Fine-tuning ({where})"),
        "xgb_curves": plot_xgb_curves(metrics["xgb_evals"], title=f"XGBoost on CNN features ({where})"),
        "confusion_matrix": plot_confusion_matrix(
            np.array(metrics["hybrid"]["confusion_matrix"]), title=f"Hybrid, test cells ({where})"
        ),
    }
    run.load()
    test, n = run.data.datasets["test"], run.config.n_gradcam
    picks = test.frame.groupby("label").head(n).index.to_numpy()
    images, labels = test.__getitems__(picks)
    figures["samples"] = plot_sample_grid(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), n_per_class=n)
    figures["gradcam"] = plot_gradcam(run.model, run.backbone, images, labels.numpy(), normalize=run.data.normalize)
    saved = {name: save_figure(fig, Path(run.dir) / f"{name}.png") for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)
    return saved

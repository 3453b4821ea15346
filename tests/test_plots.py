"""allkit.study.plots: every figure labels its axes and draws exactly the data it was given."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from allkit.errors import DataError
from allkit.explain import GradCamResult, gradcam
from allkit.metrics import patient_level
from allkit.models import build_model
from allkit.study.plots import (
    CLASS_COLORS,
    plot_backbone_comparison,
    plot_confusion_matrix,
    plot_gradcam,
    plot_gradcam_comparison,
    plot_gradcam_grid,
    plot_gradcam_result,
    plot_patient_level,
    plot_reliability,
    plot_sample_grid,
    plot_training_curves,
    plot_xgb_curves,
    save_figure,
)

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def assert_labelled(ax):
    assert ax.get_xlabel().strip(), "missing x label"
    assert ax.get_ylabel().strip(), "missing y label"
    assert ax.get_title().strip(), "missing title"


HISTORY = [
    {"epoch": 1, "train_loss": 0.60, "train_acc": 0.70, "val_loss": 0.55, "val_acc": 0.72},
    {"epoch": 2, "train_loss": 0.45, "train_acc": 0.78, "val_loss": 0.50, "val_acc": 0.76},
    {"epoch": 3, "train_loss": 0.38, "train_acc": 0.83, "val_loss": 0.49, "val_acc": 0.79},
]


def test_training_curves_two_panels_with_data():
    fig = plot_training_curves(HISTORY)
    assert isinstance(fig, Figure)
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):
        assert_labelled(ax)
        assert len(ax.get_lines()) == 2
        assert ax.get_xlabel() == "Epoch"
    train, val = ax_loss.get_lines()
    np.testing.assert_allclose(train.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(train.get_ydata(), [0.60, 0.45, 0.38])
    np.testing.assert_allclose(val.get_ydata(), [0.55, 0.50, 0.49])
    np.testing.assert_allclose(ax_acc.get_lines()[1].get_ydata(), [0.72, 0.76, 0.79])
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["train", "validation"]


def test_training_curves_without_validation_and_on_given_axes():
    history = [{k: v for k, v in h.items() if not k.startswith("val")} for h in HISTORY]
    history[0]["val_loss"] = None
    fig, axes = plt.subplots(1, 2)
    out = plot_training_curves(history, axes=axes)
    assert out is fig
    assert all(len(ax.get_lines()) == 1 for ax in axes)
    with pytest.raises(DataError, match="train_acc"):
        plot_training_curves([{"epoch": 1, "train_loss": 0.5}])
    with pytest.raises(DataError, match="empty"):
        plot_training_curves([])


def test_xgb_curves_panels_and_names():
    evals = {
        "validation_0": {"error": [0.30, 0.20, 0.10, 0.05], "auc": [0.80, 0.85, 0.90, 0.95]},
        "validation_1": {"error": [0.32, 0.25, 0.20, 0.18], "auc": [0.78, 0.80, 0.83, 0.84]},
    }
    fig = plot_xgb_curves(evals, names={"validation_0": "train", "validation_1": "validation"})
    ax_err, ax_auc = fig.axes
    for ax in fig.axes:
        assert_labelled(ax)
        assert ax.get_xlabel() == "Boosting round"
        assert len(ax.get_lines()) == 2
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]
    assert "error" in ax_err.get_ylabel().lower() and "AUC" in ax_auc.get_ylabel()
    np.testing.assert_allclose(ax_err.get_lines()[1].get_ydata(), evals["validation_1"]["error"])
    np.testing.assert_allclose(ax_err.get_lines()[0].get_xdata(), [1, 2, 3, 4])
    # error only -> a single panel
    assert len(plot_xgb_curves({"validation_0": {"error": [0.3, 0.2]}}).axes) == 1
    with pytest.raises(DataError, match="evals_result"):
        plot_xgb_curves({})


def _annotations(ax):
    return sorted(t.get_text() for t in ax.texts)


def test_confusion_matrix_counts_and_labels():
    cm = [[140, 12], [25, 300]]
    fig = plot_confusion_matrix(cm)
    ax = fig.axes[0]
    assert_labelled(ax)
    assert ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "True"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["HEM", "ALL"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["HEM", "ALL"]
    assert _annotations(ax) == sorted(["140", "12", "25", "300"])
    # heatmap cells hold the counts in row-major order (rows true HEM, ALL)
    np.testing.assert_allclose(ax.collections[0].get_array().ravel(), [140, 12, 25, 300])


def test_confusion_matrix_from_labels_and_normalised():
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    ax = plot_confusion_matrix(y_true, y_pred).axes[0]
    assert _annotations(ax) == sorted(["3", "1", "2", "4"])
    ax = plot_confusion_matrix(y_true, y_pred, normalize="true").axes[0]
    np.testing.assert_allclose(ax.collections[0].get_array().ravel(), [0.75, 0.25, 2 / 6, 4 / 6])
    assert "0.75\n(3)" in _annotations(ax)
    with pytest.raises(DataError, match="shape"):
        plot_confusion_matrix([[1, 2, 3]])
    with pytest.raises(DataError, match="normalize='all'"):
        plot_confusion_matrix([[1, 2], [3, 4]], normalize="all")


def _images(n, size=16):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_sample_grid_rows_per_class():
    images = _images(5)
    labels = [0, 1, 1, 0, 1]
    fig = plot_sample_grid(images, labels, n_per_class=2)
    axes = np.array(fig.axes).reshape(2, 2)
    assert axes[0, 0].get_ylabel().startswith("HEM") and axes[1, 0].get_ylabel().startswith("ALL")
    assert [ax.get_xlabel() for ax in axes[0]] == ["HEM #0", "HEM #3"]
    assert [ax.get_xlabel() for ax in axes[1]] == ["ALL #1", "ALL #2"]
    shown = axes[1, 1].images[0].get_array()
    np.testing.assert_allclose(shown, images[2] / 255.0, atol=1e-6)
    assert fig._suptitle is not None and fig._suptitle.get_text()


def test_sample_grid_chw_tensor_titles_and_missing_class():
    chw = torch.rand(2, 3, 8, 8)
    fig = plot_sample_grid(list(chw), [1, 1], n_per_class=3, titles=["a", "b"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[1, 0].images[0].get_array().shape == (8, 8, 3)
    np.testing.assert_allclose(axes[1, 1].images[0].get_array(), chw[1].permute(1, 2, 0).numpy(), atol=1e-6)
    assert axes[1, 0].get_xlabel() == "a"
    assert not axes[0, 0].images and axes[0, 0].get_ylabel().startswith("HEM")  # no HEM image: empty slot
    with pytest.raises(DataError, match="labels has 1 entries"):
        plot_sample_grid(list(chw), [1])
    with pytest.raises(DataError, match=r"label\(s\) \[3\]"):
        plot_sample_grid(list(chw), [1, 3])


def test_gradcam_grid_original_and_overlay():
    images = _images(2, size=12)
    yy, xx = np.mgrid[0:12, 0:12]
    heat = np.exp(-((yy - 6) ** 2 + (xx - 6) ** 2) / 10.0).astype(np.float32)
    fig = plot_gradcam_grid(images, [heat, heat / heat.max()], labels=[0, 1], preds=[0, 0])
    axes = np.array(fig.axes).reshape(2, 2)
    np.testing.assert_allclose(axes[0, 0].images[0].get_array(), images[0] / 255.0, atol=1e-6)
    overlay = np.asarray(axes[0, 1].images[0].get_array())
    assert overlay.shape == (12, 12, 3) and overlay.dtype == np.uint8
    assert not np.array_equal(overlay, images[0])
    assert "true ALL, predicted HEM" in axes[1, 0].get_ylabel()
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    with pytest.raises(DataError, match=r"heatmap 0 has shape \(5, 5\)"):
        plot_gradcam_grid(images[:1], [np.zeros((5, 5))], labels=[0])
    with pytest.raises(DataError, match="heatmaps has 1 entries"):
        plot_gradcam_grid(images, [heat], labels=[0, 1])


def _result(labels=(0, 1), predictions=(0, 0), targets=(0, 1), seed=0) -> GradCamResult:
    rng = np.random.default_rng(seed)
    n = len(predictions)
    return GradCamResult(
        heatmaps=rng.random((n, 12, 12)).astype(np.float32),
        images=rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8),
        targets=list(targets),
        predictions=list(predictions),
        probabilities=np.full((n, 2), 0.5, dtype=np.float32),
        labels=None if labels is None else list(labels),
    )


def test_gradcam_result_figure():
    result = _result()
    fig = plot_gradcam_result(result, title="cells")
    axes = np.array(fig.axes).reshape(2, 2)
    assert fig._suptitle.get_text() == "cells"
    np.testing.assert_allclose(axes[1, 0].images[0].get_array(), result.images[1] / 255.0, atol=1e-6)
    shown = np.asarray(axes[1, 1].images[0].get_array(), dtype=int)
    assert np.abs(shown - result.overlays()[1].astype(int)).max() <= 1  # the same overlay, up to rounding
    assert "true ALL, predicted HEM" in axes[1, 0].get_ylabel()
    with pytest.raises(DataError, match="labels"):
        plot_gradcam_result(_result(labels=None))
    # on a 1000-class head the predictions are not HEM/ALL: the rows then name only the true class
    imagenet = _result(predictions=(181, 3))
    ylabel = np.array(plot_gradcam_result(imagenet).axes).reshape(2, 2)[0, 0].get_ylabel()
    assert "true HEM" in ylabel and "predicted" not in ylabel


def test_gradcam_figure_of_a_model():
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fig = plot_gradcam(model, "resnet18", images, [1, 0], title="two cells")
    axes = np.array(fig.axes).reshape(2, 2)
    expected = gradcam(model, "resnet18", images, "true", [1, 0])
    shown = np.asarray(axes[0, 1].images[0].get_array(), dtype=int)
    assert np.abs(shown - expected.overlays()[0].astype(int)).max() <= 1
    assert "true ALL" in axes[0, 0].get_ylabel() and fig._suptitle.get_text() == "two cells"


def test_gradcam_comparison_figure():
    first, second = _result(targets=(181, 181)), _result(targets=(0, 1))
    fig = plot_gradcam_comparison(first, second, titles=("ImageNet 181", "true class"))
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[0, 1].get_title() == "ImageNet 181" and axes[0, 2].get_title() == "true class"
    with pytest.raises(DataError, match="different images"):
        plot_gradcam_comparison(first, _result(seed=1))


def test_backbone_comparison_bars_and_error_bars():
    df = pd.DataFrame(
        {
            "backbone": ["EfficientNet-B0", "ResNet-50", "VGG-16"],
            "accuracy": [0.81, 0.78, 0.74],
            "low": [0.76, 0.72, 0.70],
            "high": [0.85, 0.82, 0.79],
        }
    )
    fig = plot_backbone_comparison(df)
    ax = fig.axes[0]
    assert_labelled(ax)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, df["accuracy"])
    assert [t.get_text() for t in ax.get_xticklabels()] == df["backbone"].tolist()
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    # without CI columns: plain bars, no error bars
    ax = plot_backbone_comparison(df[["backbone", "accuracy"]]).axes[0]
    assert not any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    with pytest.raises(DataError, match="'auc'"):
        plot_backbone_comparison(df, metric="auc")


def test_reliability_diagram():
    rng = np.random.default_rng(0)
    prob = rng.random(500)
    y = (rng.random(500) < prob).astype(int)
    ax = plot_reliability(y, prob, n_bins=5).axes[0]
    assert_labelled(ax)
    diagonal, curve = ax.get_lines()
    np.testing.assert_allclose(diagonal.get_xydata(), [[0, 0], [1, 1]])
    assert len(curve.get_xdata()) == 5
    assert "ECE" in ax.get_title()


def test_patient_level_plot():
    df = patient_level(
        [1, 1, 1, 0, 0, 0], [0.9, 0.7, 0.2, 0.1, 0.15, 0.6], ["A", "A", "B", "C", "C", "D"], threshold=0.4
    )
    ax = plot_patient_level(df).axes[0]
    assert_labelled(ax)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, sorted(df["mean_prob"]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["C", "B", "D", "A"]
    colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colors == [CLASS_COLORS[k] for k in (0, 1, 0, 1)]
    threshold_line = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert threshold_line and threshold_line[0].get_ydata()[0] == pytest.approx(0.4)  # from df.attrs
    with pytest.raises(DataError, match="mean_prob"):
        plot_patient_level(df.drop(columns="mean_prob"))


def test_plots_accept_existing_axes():
    fig, ax = plt.subplots()
    assert plot_confusion_matrix([[1, 2], [3, 4]], ax=ax) is fig
    fig2, ax2 = plt.subplots()
    assert plot_backbone_comparison(pd.DataFrame({"backbone": ["a"], "accuracy": [0.5]}), ax=ax2) is fig2


def test_save_figure_atomic_png(tmp_path):
    fig = plot_confusion_matrix([[5, 1], [2, 7]])
    target = tmp_path / "figs" / "nested" / "cm.png"
    out = save_figure(fig, target)
    assert out == target and target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["cm.png"]  # no temp file left
    with Image.open(target) as im:
        assert im.format == "PNG"
        assert im.size == (int(fig.get_figwidth() * 150), int(fig.get_figheight() * 150))
    # overwriting an existing file works and still leaves nothing behind
    save_figure(fig, target)
    assert [p.name for p in target.parent.iterdir()] == ["cm.png"]
    assert save_figure(fig, tmp_path / "noext").name == "noext.png"


def test_save_figure_failure_leaves_no_temp(tmp_path, monkeypatch):
    fig = plot_confusion_matrix([[5, 1], [2, 7]])
    target = tmp_path / "cm.png"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]
    with pytest.raises(DataError, match="'xyz'"):
        save_figure(fig, tmp_path / "cm.xyz")

"""Tests for allkit.study.calibration: thresholds with known answers, calibrators on deliberately miscalibrated
probabilities, the report, scale_pos_weight, and the comparison reliability plot."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from allkit.errors import DataError, ModelError
from allkit.study.calibration import (
    ProbabilityCalibrator,
    calibration_report,
    choose_threshold,
    expected_calibration_error,
    reliability_curve,
    scale_pos_weight,
)
from allkit.study.plots import plot_reliability_comparison


def cells(hem, all_):
    """Labels and probabilities from lists of HEM and ALL cells' p(ALL)."""
    y = np.array([0] * len(hem) + [1] * len(all_))
    return y, np.array([*hem, *all_], dtype=float)


def miscalibrated(n, seed, stretch=3.0):
    """Cells whose true P(ALL) is q but whose model reports sigmoid(stretch * logit(q)): over-confident
    by a known factor, so Platt's slope should come out as 1 / stretch."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.03, 0.97, n)
    y = (rng.random(n) < q).astype(int)
    logit_q = np.log(q / (1 - q))
    return y, 1 / (1 + np.exp(-stretch * logit_q))


# ------------------------------------------------------------------------------------------ thresholds
def test_threshold_separates_overlapping_classes_at_the_gap():
    # One HEM cell at 0.6: any threshold in [0.6, 0.7) separates perfectly; 0.5 misses it.
    y, p = cells([0.1, 0.2, 0.3, 0.6], [0.7, 0.8, 0.9])
    choice = choose_threshold(y, p)
    assert choice.threshold == pytest.approx(0.65)  # the midpoint of the gap, not a cell's own value
    assert choice.value == pytest.approx(1.0)
    assert choice.at_default == pytest.approx((1.0 + 0.75) / 2)
    assert choice.criterion == "balanced_accuracy"


def test_accuracy_calls_everything_all_where_balanced_accuracy_does_not():
    # 100 ALL cells (80 at 0.9, 20 at 0.3), 10 HEM at 0.6. Calling every cell ALL is 100/110 right,
    # more than the 90/110 of the threshold between 0.6 and 0.9, which is the only one catching the HEM.
    y, p = cells([0.6] * 10, [0.9] * 80 + [0.3] * 20)
    by_accuracy = choose_threshold(y, p, "accuracy")
    assert by_accuracy.threshold == pytest.approx(0.0)
    assert by_accuracy.value == pytest.approx(100 / 110)
    by_balance = choose_threshold(y, p, "balanced_accuracy")
    assert by_balance.threshold == pytest.approx(0.75)
    assert by_balance.value == pytest.approx((80 / 100 + 1) / 2)


def test_youden_is_balanced_accuracy_rescaled():
    y, p = miscalibrated(300, seed=4)
    ba, j = choose_threshold(y, p, "balanced_accuracy"), choose_threshold(y, p, "youden")
    assert j.threshold == ba.threshold
    assert j.value == pytest.approx(2 * ba.value - 1)


def test_ties_keep_the_default_when_it_is_among_the_best():
    y, p = cells([0.1, 0.2], [0.8, 0.9])
    assert choose_threshold(y, p).threshold == 0.5
    assert choose_threshold(y, p, "accuracy").threshold == 0.5


def test_ties_equally_far_from_default_take_the_lower_threshold():
    # Balanced accuracy is 2/3 at 0.3 and at 0.7, and 1/2 at every threshold in between.
    y, p = cells([0.2, 0.55, 0.6], [0.4, 0.45, 0.8])
    choice = choose_threshold(y, p)
    assert choice.threshold == pytest.approx(0.3)
    assert choice.value == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_is_optimal_against_a_brute_force_grid(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(3)  # rounding makes ties between cells
    choice = choose_threshold(y, p)
    # The reported value is what p > threshold really scores, and no threshold on a fine grid beats it.
    assert choice.value == pytest.approx(balanced_accuracy_score(y, (p > choice.threshold).astype(int)))
    grid = np.linspace(0, 1, 2001)
    best_on_grid = max(balanced_accuracy_score(y, (p > t).astype(int)) for t in grid)
    assert choice.value >= best_on_grid - 1e-12
    assert choice.at_default == pytest.approx(balanced_accuracy_score(y, (p > 0.5).astype(int)))


def test_threshold_accepts_predict_proba_arrays():
    y, p = cells([0.1, 0.2, 0.3, 0.6], [0.7, 0.8, 0.9])
    assert choose_threshold(y, np.c_[1 - p, p]).threshold == pytest.approx(0.65)


@pytest.mark.parametrize(
    ("y", "p", "kwargs", "message"),
    [
        ([1, 1, 1], [0.2, 0.6, 0.9], {}, "only ALL cells"),
        ([0, 0], [0.2, 0.6], {}, "only HEM cells"),
        ([0, 1, 1], [0.2, 1.3, 0.9], {}, "probabilities of ALL in \\[0, 1\\]"),
        ([0, 1, 1], [0.2, 0.9], {}, "different lengths \\[2, 3\\]"),
        ([0, 1, 2], [0.2, 0.6, 0.9], {}, "y_true holds \\[2\\]; expected 0 \\(HEM\\) or 1 \\(ALL\\)"),
        ([0, 1], [0.2, 0.6], {"criterion": "f1"}, "criterion='f1'"),
    ],
)
def test_threshold_rejects_bad_input(y, p, kwargs, message):
    with pytest.raises(DataError, match=message):
        choose_threshold(y, p, **kwargs)


# ------------------------------------------------------------------------------------------ calibrators
@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_fitted_on_validation_improves_unseen_cells(method):
    y_val, p_val = miscalibrated(3000, seed=0)
    y_test, p_test = miscalibrated(3000, seed=1)
    calibrator = ProbabilityCalibrator(method).fit(p_val, y_val)
    after = calibrator.transform(p_test)
    before_ece = expected_calibration_error(y_test, p_test)
    assert before_ece > 0.08  # the example is miscalibrated, or the test proves nothing
    assert expected_calibration_error(y_test, after) < before_ece / 2
    report = calibration_report(y_test, p_test, after)
    assert report.loc["after", "brier"] < report.loc["before", "brier"]


def test_platt_recovers_the_known_overconfidence():
    y, p = miscalibrated(5000, seed=2, stretch=3.0)
    calibrator = ProbabilityCalibrator("platt").fit(p, y)
    assert calibrator.slope_ == pytest.approx(1 / 3, abs=0.05)
    assert calibrator.intercept_ == pytest.approx(0.0, abs=0.1)


def test_platt_leaves_calibrated_probabilities_almost_unchanged():
    y, p = miscalibrated(5000, seed=3, stretch=1.0)
    calibrator = ProbabilityCalibrator("platt").fit(p, y)
    assert calibrator.slope_ == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(calibrator.transform(p), p, atol=0.05)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_is_monotone_and_stays_in_unit_interval(method):
    y, p = miscalibrated(500, seed=5)
    calibrator = ProbabilityCalibrator(method).fit(p, y)
    grid = np.linspace(0, 1, 1001)  # includes 0 and 1 (infinite logits) and values outside p's range
    out = calibrator.transform(grid)
    assert out.shape == grid.shape
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= 0 and out.max() <= 1


def test_platt_keeps_the_ranking_so_auc_is_unchanged():
    y_val, p_val = miscalibrated(500, seed=6)
    y_test, p_test = miscalibrated(500, seed=7)
    after = ProbabilityCalibrator("platt").fit(p_val, y_val).transform(p_test)
    assert roc_auc_score(y_test, after) == pytest.approx(roc_auc_score(y_test, p_test))


def test_platt_warns_when_validation_reverses_the_ranking():
    y, p = cells([0.7, 0.8, 0.9, 0.75], [0.1, 0.2, 0.3, 0.25])
    with pytest.warns(UserWarning, match="slope"):
        calibrator = ProbabilityCalibrator("platt").fit(p, y)
    assert calibrator.slope_ < 0


def test_calibrator_reads_predict_proba_columns():
    y, p = miscalibrated(400, seed=8)
    a = ProbabilityCalibrator("isotonic").fit(np.c_[1 - p, p], y).transform(np.c_[1 - p, p])
    b = ProbabilityCalibrator("isotonic").fit(p, y).transform(p)
    np.testing.assert_allclose(a, b)


def test_calibrator_errors():
    with pytest.raises(DataError, match="method='beta'"):
        ProbabilityCalibrator("beta").fit([0.2, 0.8], [0, 1])
    with pytest.raises(DataError, match="y_val holds only HEM cells"):
        ProbabilityCalibrator().fit([0.2, 0.8], [0, 0])
    with pytest.raises(DataError, match="probabilities of ALL in \\[0, 1\\]"):
        ProbabilityCalibrator().fit([-0.2, 0.8], [0, 1])
    with pytest.raises(DataError, match="has shape \\(2, 3\\)"):
        ProbabilityCalibrator().fit(np.full((2, 3), 0.3), [0, 1])
    with pytest.raises(ModelError, match="not fitted"):
        ProbabilityCalibrator("isotonic").transform([0.5])


# ------------------------------------------------------------------------------------------ report
def test_calibration_report_matches_the_definitions():
    y = np.array([0, 0, 1, 1, 1])
    before = np.array([0.1, 0.6, 0.4, 0.9, 0.95])
    after = {"platt": np.array([0.2, 0.5, 0.5, 0.8, 0.85]), "isotonic": np.array([0.0, 0.5, 0.5, 1.0, 1.0])}
    report = calibration_report(y, before, after, n_bins=5)
    assert list(report.index) == ["before", "platt", "isotonic"]
    assert report.loc["before", "brier"] == pytest.approx(np.mean((before - y) ** 2))
    assert report.loc["isotonic", "brier"] == pytest.approx(np.mean((after["isotonic"] - y) ** 2))
    assert report.loc["platt", "ece"] == pytest.approx(expected_calibration_error(y, after["platt"], n_bins=5))
    assert report.loc["before", "mean_p"] == pytest.approx(before.mean())
    assert report.attrs["frac_all"] == pytest.approx(0.6)


def test_calibration_report_rejects_misaligned_probabilities():
    with pytest.raises(DataError, match="different lengths \\[2, 3\\]"):
        calibration_report([0, 1, 1], [0.2, 0.7, 0.9], [0.2, 0.7])


# ------------------------------------------------------------------------------------------ imbalance
def test_scale_pos_weight_is_negatives_over_positives():
    assert scale_pos_weight([1, 1, 1, 0]) == pytest.approx(1 / 3)  # ALL majority, as in C-NMC: < 1
    assert scale_pos_weight([0, 0, 0, 1]) == pytest.approx(3.0)
    y = np.array([1] * 183 + [0] * 57)
    w = scale_pos_weight(y)
    assert w * np.sum(y == 1) == pytest.approx(np.sum(y == 0))  # both classes then weigh the same


def test_scale_pos_weight_needs_both_classes():
    with pytest.raises(DataError, match="0 HEM"):
        scale_pos_weight([1, 1])


# ------------------------------------------------------------------------------------------ plot
def test_reliability_comparison_plot():
    y, p = miscalibrated(400, seed=9)
    after = ProbabilityCalibrator("platt").fit_transform(p, y)
    fig = plot_reliability_comparison(y, {"before": p, "Platt": after}, n_bins=5)
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "perfectly calibrated"
    assert labels[1] == f"before (ECE {expected_calibration_error(y, p, n_bins=5):.3f})"
    assert labels[2].startswith("Platt (ECE ")
    assert len(ax.get_lines()) == 3
    with pytest.raises(DataError, match="non-empty mapping"):
        plot_reliability_comparison(y, {})
    plt.close("all")


def test_platt_is_the_unpenalised_maximum_likelihood_fit():
    # At the unpenalised optimum the logistic score equations hold exactly: the residuals y - p' sum to
    # zero, alone and weighted by logit(p). A shrunk (penalised) slope breaks the second one on few cells.
    y, p = miscalibrated(60, seed=10)
    after = ProbabilityCalibrator("platt").fit_transform(p, y)
    residual = y - after
    assert abs(residual.sum()) < 1e-3
    assert abs((residual * np.log(p / (1 - p))).sum()) < 1e-3


# ------------------------------------------------------------------------------------------ ECE (moved from metrics)
def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    prob = rng.random(20000)
    y = (rng.random(20000) < prob).astype(int)  # P(ALL | prob) = prob: calibrated
    calibrated = expected_calibration_error(y, prob)
    overconfident = expected_calibration_error(y, np.where(prob > 0.5, 0.99, 0.01))
    assert calibrated < 0.02
    assert overconfident > 0.2


def test_ece_hand_case_and_reliability_curve():
    # two bins used: [0.0,0.1) holds 0.05 x2 (labels 0,1) and [0.9,1.0] holds 0.95 x2 (labels 1,1)
    y = [0, 1, 1, 1]
    p = [0.05, 0.05, 0.95, 0.95]
    curve = reliability_curve(y, p, n_bins=10)
    assert curve["count"].tolist() == [2, 2]
    np.testing.assert_allclose(curve["mean_predicted"], [0.05, 0.95])
    np.testing.assert_allclose(curve["fraction_positive"], [0.5, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    with pytest.raises(DataError, match="n_bins=0"):
        expected_calibration_error(y, p, n_bins=0)

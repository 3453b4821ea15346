"""Decision thresholds and probability calibration, chosen on validation cells, applied unchanged to test.

A classifier's probability of ALL serves two purposes: a *decision* (ALL when ``p > threshold``) and a
*statement of confidence* ("70% likely malignant"). Both can be adjusted after training, on cells the
model was not fitted on -- the validation subjects -- and must then be frozen before the test subjects
are looked at:

- :func:`choose_threshold` moves the decision threshold away from 0.5 (e.g. to balance sensitivity and
  specificity when one class dominates the training cells);
- :class:`ProbabilityCalibrator` remaps the probability itself so that, among cells given ``p = 0.7``,
  about 70% are ALL: Platt scaling (a logistic regression on the logit of ``p``) or isotonic regression
  (a monotone step function), both from scikit-learn;
- :func:`calibration_report` measures the effect: expected calibration error and Brier score;
- :func:`scale_pos_weight` is XGBoost's knob for class imbalance, computed from training labels.

Labels follow :mod:`allkit.constants`: ALL = 1 (positive), HEM = 0. Probabilities are of ALL; a
``(n, 2)`` ``[HEM, ALL]`` ``predict_proba`` array is accepted wherever one is expected (column 1 is used).
"""

import warnings
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from allkit.constants import LABEL_ALL, LABEL_HEM
from allkit.errors import DataError, ModelError
from allkit.metrics import check_inputs

__all__ = [
    "CRITERIA",
    "METHODS",
    "ThresholdChoice",
    "choose_threshold",
    "ProbabilityCalibrator",
    "calibration_report",
    "scale_pos_weight",
]

CRITERIA = ("balanced_accuracy", "accuracy", "youden")
METHODS = ("platt", "isotonic")
DEFAULT_THRESHOLD = 0.5
# Platt works on logit(p); XGBoost and float32 softmax outputs reach exactly 0 or 1, whose logit is infinite.
_EPS = 1e-6


def _check_pair(y, p, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    t, _, s, _ = check_inputs(y, None, p)
    if len(np.unique(t)) < 2:
        only = "ALL" if t[0] == LABEL_ALL else "HEM"
        raise DataError(
            f"{y_name} holds only {only} cells ({len(t)}): expected both HEM (0) and ALL (1) cells, since "
            "a threshold or calibration fitted on one class cannot tell the classes apart"
        )
    return t, s


# --------------------------------------------------------------------------------------------------
# decision threshold
# --------------------------------------------------------------------------------------------------
class ThresholdChoice(NamedTuple):
    """What :func:`choose_threshold` found: ``threshold`` (ALL when ``p > threshold``), the ``value`` of
    the ``criterion`` on the cells it was chosen on, and ``at_default`` (the same at 0.5)."""

    threshold: float
    value: float
    criterion: str
    at_default: float


def choose_threshold(y_true, p_all, criterion: str = "balanced_accuracy") -> ThresholdChoice:
    """The decision threshold that maximises ``criterion`` on these (validation) cells.

    ``criterion``:

    - ``"balanced_accuracy"``: the mean of sensitivity (recall of ALL) and specificity (recall of HEM),
      so each class counts equally however many cells it has;
    - ``"accuracy"``: the fraction of cells right (favours the class with more cells);
    - ``"youden"``: Youden's J = sensitivity + specificity - 1. It is ``2 * balanced accuracy - 1``, so
      it picks the same threshold; offered because the clinical literature uses that name.

    A cell is called ALL when ``p > threshold`` (as in :mod:`allkit.metrics` and XGBoost's ``predict``).
    The candidates are 0.5, 0, 1 and the midpoints between consecutive distinct probabilities, i.e. one
    threshold per distinct decision, and (0, 0.5 and 1 aside) never exactly on a validation cell's own
    probability.

    Ties: a whole range of thresholds usually scores the same. The one **closest to 0.5** is returned
    (0.5 itself whenever it is among the best), and of two equally close the lower one: the default is
    moved only as far as the validation cells justify.
    """
    if criterion not in CRITERIA:
        raise DataError(f"criterion={criterion!r}: expected one of {CRITERIA}")
    t, s = _check_pair(y_true, p_all, "y_true")
    distinct = np.unique(s)
    candidates = np.unique(np.concatenate([[0.0, DEFAULT_THRESHOLD, 1.0], (distinct[1:] + distinct[:-1]) / 2]))

    # Cells called ALL at each candidate, counted from sorted scores instead of one pass per candidate.
    pos, neg = np.sort(s[t == LABEL_ALL]), np.sort(s[t == LABEL_HEM])
    tp = len(pos) - np.searchsorted(pos, candidates, side="right")
    tn = np.searchsorted(neg, candidates, side="right")
    sensitivity, specificity = tp / len(pos), tn / len(neg)
    if criterion == "accuracy":
        values = (tp + tn) / len(t)
    elif criterion == "balanced_accuracy":
        values = (sensitivity + specificity) / 2
    else:
        values = sensitivity + specificity - 1

    # Equal up to float rounding: sums of different fractions of the same counts can differ in the last bit.
    best = np.flatnonzero(values >= values.max() - 1e-12)
    distance = np.abs(candidates[best] - DEFAULT_THRESHOLD)
    # Candidates ascend, so the first of the (equally) closest is the lower one.
    chosen = best[np.flatnonzero(distance <= distance.min() + 1e-12)[0]]
    default = int(np.flatnonzero(candidates == DEFAULT_THRESHOLD)[0])
    return ThresholdChoice(float(candidates[chosen]), float(values[chosen]), criterion, float(values[default]))


# --------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------
class ProbabilityCalibrator:
    """Remap probabilities of ALL so that they match observed frequencies; fitted on validation cells.

    - ``method="platt"``: ``p' = sigmoid(a * logit(p) + b)``, a and b from an unpenalised
      :class:`sklearn.linear_model.LogisticRegression`. Two parameters, so little data suffices; it keeps
      the ranking of cells (ROC AUC unchanged) as long as ``a > 0``, but can only stretch or shift the
      logit, not bend it.
    - ``method="isotonic"``: :class:`sklearn.isotonic.IsotonicRegression`, the best non-decreasing step
      function from p to the observed label. Bends freely, but needs more cells, and its flat steps give
      many cells the same probability (ties, which can lower the AUC a little). Values outside the
      validation range are clipped to its ends.

    ``fit(p_val, y_val)`` then ``transform(p)``: both return / take probabilities of ALL, 1-D (a
    ``(n, 2)`` ``[HEM, ALL]`` array is read as its column 1). After fitting, ``slope_`` and
    ``intercept_`` hold Platt's a and b.
    """

    def __init__(self, method: str = "platt"):
        self.method = method

    def fit(self, p_val, y_val) -> "ProbabilityCalibrator":
        if self.method not in METHODS:
            raise DataError(f"method={self.method!r}: expected one of {METHODS}")
        y, p = _check_pair(y_val, p_val, "y_val")
        if self.method == "platt":
            # C=inf: no penalty. Platt's two parameters are the whole model; shrinking the slope towards
            # 0 would pull every probability towards the base rate, which is not what was measured.
            model = LogisticRegression(C=np.inf)
            model.fit(_logit(p)[:, None], y)
            self.slope_ = float(model.coef_[0, 0])
            self.intercept_ = float(model.intercept_[0])
            if self.slope_ <= 0:
                warnings.warn(
                    f"Platt slope {self.slope_:.3g} <= 0: on these validation cells a higher p(ALL) does "
                    "not mean more ALL, so the calibrated probability reverses (or flattens) the model's "
                    "ranking; check the validation subjects before using it",
                    stacklevel=2,
                )
        else:
            model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            model.fit(p, y)
        self.model_ = model
        self.n_fit_ = int(len(y))
        return self

    def transform(self, p) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise ModelError(
                f"ProbabilityCalibrator(method={self.method!r}) is not fitted: call "
                "fit(p_val, y_val) on validation cells first"
            )
        s = check_inputs([0] * len(np.asarray(p)), None, p)[2]
        if self.method == "platt":
            return self.model_.predict_proba(_logit(s)[:, None])[:, 1]
        return np.clip(self.model_.predict(s), 0.0, 1.0)

    def fit_transform(self, p_val, y_val) -> np.ndarray:
        return self.fit(p_val, y_val).transform(p_val)

    def __repr__(self) -> str:
        return f"ProbabilityCalibrator(method={self.method!r})"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def calibration_report(y_true, p_before, p_after, n_bins: int = 10) -> pd.DataFrame:
    """ECE (:func:`expected_calibration_error`, ``n_bins`` equal-width bins) and Brier
    score (mean squared error of p(ALL), :func:`sklearn.metrics.brier_score_loss`), lower is better.

    ``p_after`` is one array (rows ``before`` and ``after``) or a mapping ``{name: probabilities}`` (one
    row per name after ``before``). Columns: ``ece``, ``brier``, ``mean_p`` (mean predicted probability
    of ALL) and ``n``; ``df.attrs["frac_all"]`` is the observed fraction of ALL cells.
    """
    t = check_inputs(y_true)[0]
    after = dict(p_after) if isinstance(p_after, Mapping) else {"after": p_after}
    rows = {}
    for name, p in {"before": p_before, **after}.items():
        s = check_inputs(t, None, p)[2]
        rows[name] = {
            "ece": expected_calibration_error(t, s, n_bins=n_bins),
            "brier": float(brier_score_loss(t, s, pos_label=LABEL_ALL)),
            "mean_p": float(s.mean()),
            "n": int(len(s)),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "probabilities"
    df.attrs["frac_all"] = float(np.mean(t == LABEL_ALL))
    return df


# --------------------------------------------------------------------------------------------------
# class imbalance
# --------------------------------------------------------------------------------------------------
def scale_pos_weight(y) -> float:
    """XGBoost's ``scale_pos_weight`` for these (training) labels: ``n_negative / n_positive``.

    XGBoost's positive class is label 1, which is ALL here. In C-NMC the ALL cells are the *majority*
    (about two thirds), so the value is below 1: each ALL cell's gradient is scaled down so that the two
    classes weigh the same in total -- the opposite of the usual "rare positive" use of this knob.
    """
    t = check_inputs(y)[0]
    n_pos = int(np.sum(t == LABEL_ALL))
    n_neg = int(np.sum(t == LABEL_HEM))
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"y has {n_pos} ALL and {n_neg} HEM label(s): expected both classes to weigh them")
    return n_neg / n_pos


# --------------------------------------------------------------------------------------------------
# reliability
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
    t, _, s, _ = check_inputs(y_true, None, y_prob)
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

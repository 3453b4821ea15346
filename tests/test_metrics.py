"""allkit.metrics: hand-checked values, agreement with scikit-learn, the input checks, subject bootstrap."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from allkit.cli.model_cmd import format_table2
from allkit.errors import DataError
from allkit.metrics import (
    BOOTSTRAP_METRICS,
    bootstrap_ci,
    check_inputs,
    classification_table,
    evaluate,
    evaluate_with_ci,
    patient_level,
    patient_level_metrics,
)

# 10 cells: 4 HEM (0) then 6 ALL (1).
#   HEM cells predicted 0,0,0,1  -> TN=3, FP=1
#   ALL cells predicted 1,1,1,1,0,0 -> TP=4, FN=2
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
Y_PRED = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])


def synthetic(n_subjects=14, n_cells=3500, seed=0):
    """Cells of n_subjects subjects (even ids HEM, odd ALL), with a per-subject difficulty."""
    rng = np.random.default_rng(seed)
    subjects = rng.integers(0, n_subjects, n_cells)
    y = (subjects % 2).astype(int)
    shift = rng.normal(0, 0.15, n_subjects)[subjects]
    score = np.clip(0.5 + (2 * y - 1) * 0.15 + shift * (2 * y - 1) + rng.normal(0, 0.2, n_cells), 0, 1)
    pred = (score > 0.5).astype(int)
    return y, pred, score, np.array([f"S{s:02d}" for s in subjects])


# --------------------------------------------------------------------------------------------------
# point estimates
# --------------------------------------------------------------------------------------------------
def test_evaluate_hand_computed_case():
    out = evaluate(Y_TRUE, Y_PRED)
    assert out["n"] == 10
    assert out["accuracy"] == pytest.approx(7 / 10)  # TN 3 + TP 4
    assert out["confusion_matrix"] == [[3, 1], [2, 4]]  # rows true [HEM, ALL], cols predicted
    hem, all_ = out["per_class"]["HEM"], out["per_class"]["ALL"]
    assert hem["precision"] == pytest.approx(3 / 5)  # predicted HEM: 3 true HEM + 2 missed ALL
    assert hem["recall"] == pytest.approx(3 / 4)
    assert hem["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert hem["support"] == 4
    assert all_["precision"] == pytest.approx(4 / 5)
    assert all_["recall"] == pytest.approx(4 / 6)
    assert all_["support"] == 6
    f1_all = 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6)
    assert out["weighted_f1"] == pytest.approx(0.4 * hem["f1"] + 0.6 * f1_all)
    assert out["macro_f1"] == pytest.approx((hem["f1"] + f1_all) / 2)
    assert out["sensitivity"] == pytest.approx(4 / 6)
    assert out["specificity"] == pytest.approx(3 / 4)
    assert out["roc_auc"] is None
    assert "n_subjects" not in out


def test_evaluate_agrees_with_sklearn_and_is_json():
    y, pred, score, subj = synthetic()
    out = evaluate(y, pred, score, subj)
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert out["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y, score))
    assert out["n_subjects"] == 14
    # plain Python types only
    assert json.loads(json.dumps(out)) == out
    assert type(out["accuracy"]) is float and type(out["n"]) is int
    assert all(type(v) is int for row in out["confusion_matrix"] for v in row)


def test_evaluate_roc_auc_none_with_one_class_and_accepts_predict_proba():
    assert evaluate([1, 1, 1], [1, 0, 1], [0.9, 0.2, 0.8])["roc_auc"] is None
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out = evaluate([0, 1, 0, 1], [0, 1, 0, 1], proba)
    assert out["roc_auc"] == pytest.approx(1.0)


def test_classification_table_layout():
    df = classification_table(Y_TRUE, Y_PRED)
    assert list(df.index) == ["HEM", "ALL", "accuracy", "macro avg", "weighted avg"]
    assert list(df.columns) == ["precision", "recall", "f1-score", "support"]
    assert df.loc["HEM", "precision"] == pytest.approx(0.6)
    assert df.loc["ALL", "recall"] == pytest.approx(4 / 6)
    assert df.loc["accuracy", "f1-score"] == pytest.approx(0.7)
    assert np.isnan(df.loc["accuracy", "precision"]) and np.isnan(df.loc["accuracy", "recall"])
    assert df["support"].tolist() == [4, 6, 10, 10, 10]
    assert df.loc["weighted avg", "f1-score"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="weighted"))


def test_classification_table_keeps_absent_class_row():
    df = classification_table([1, 1, 1], [1, 1, 0])
    assert df.loc["HEM", "support"] == 0
    assert df.loc["HEM", "precision"] == 0.0  # zero_division=0


def test_format_table2_rounds_like_paper():
    """Table 2 as the CLI prints it (allkit.cli.model_cmd.format_table2, moved there from allkit.metrics)."""
    text = format_table2(classification_table(Y_TRUE, Y_PRED))
    lines = text.splitlines()
    assert lines[0] == "| | precision | recall | f1-score | support |"
    assert lines[2] == "| HEM | 0.60 | 0.75 | 0.67 | 4 |"
    assert lines[3] == "| ALL | 0.80 | 0.67 | 0.73 | 6 |"
    assert lines[4] == "| accuracy |  |  | 0.70 | 10 |"
    assert format_table2(classification_table(Y_TRUE, Y_PRED), decimals=3).splitlines()[2].startswith("| HEM | 0.600")


@pytest.mark.parametrize(
    "args, match",
    [
        (([0, 1, 1], [0, 1]), r"different lengths \[2, 3\]"),
        (([0, 2, 1], [0, 1, 1]), r"y_true holds \[2\]; expected 0 \(HEM\) or 1 \(ALL\)"),
        (([0, 1, 1], [0, 1, -1]), r"y_pred holds \[-1\]"),
        (([], []), r"y_true has shape \(0,\); expected a non-empty 1-D array"),
        (([[0, 1], [1, 0]], [0, 1]), r"y_true has shape \(2, 2\)"),
        ((["HEM", "ALL"], [0, 1]), r"y_true holds \['ALL', 'HEM'\]"),
        (([0, 1], [0, 1], [0.2, 1.5]), r"y_score must hold probabilities of ALL in \[0, 1\]"),
        (([0, 1], [0, 1], [0.2, np.nan]), "NaN"),
        (([0, 1], [0, 1], ["a", "b"]), "y_score must hold probabilities"),
        (([0, 1], [0, 1], [0.2, 0.3, 0.4]), r"different lengths \[2, 3\]"),
        (([0, 1], [0, 1], None, ["a"]), r"different lengths \[1, 2\]"),
        (([0, 1], [0, 1], None, ["a", None]), "subjects has 1 missing"),
    ],
)
def test_evaluate_validation_errors(args, match):
    with pytest.raises(DataError, match=match):
        evaluate(*args)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        evaluate([0, 1], [0, 3])


def test_check_inputs_returns_checked_arrays():
    t, p, s, g = check_inputs(torch.tensor([0, 1, 1]), [0.0, 1.0, 0.0], np.array([[0.8, 0.2], [0.1, 0.9], [0.5, 0.5]]))
    assert t.tolist() == [0, 1, 1] and p.tolist() == [0, 1, 0] and g is None
    assert t.dtype.kind == "i" and p.dtype.kind == "i"
    np.testing.assert_allclose(s, [0.2, 0.9, 0.5])  # predict_proba output: its P(ALL) column
    assert check_inputs([1, 0], subjects=["a", "b"])[3].tolist() == ["a", "b"]


# --------------------------------------------------------------------------------------------------
# subject-level bootstrap
# --------------------------------------------------------------------------------------------------
def test_bootstrap_named_metrics_match_sklearn_estimates():
    y, pred, score, subj = synthetic()
    expected = {
        "accuracy": accuracy_score(y, pred),
        "weighted_f1": f1_score(y, pred, average="weighted"),
        "roc_auc": roc_auc_score(y, score),
        "sensitivity": recall_score(y, pred, pos_label=1),
        "specificity": recall_score(y, pred, pos_label=0),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
    }
    assert set(expected) == set(BOOTSTRAP_METRICS)
    for name, value in expected.items():
        out = bootstrap_ci(y, pred, subj, metric=name, y_score=score, n_boot=200)
        assert out["estimate"] == pytest.approx(value), name
        assert out["low"] <= out["high"]
        assert out["unit"] == "subject" and out["n_boot"] == 200 and out["n_subjects"] == 14
        json.dumps(out)


def _subject_draws(y, subjects, n_boot, seed):
    """How many times each subject is drawn in each replicate, drawn as :func:`bootstrap_ci` documents it: a
    seeded ``numpy.random.default_rng``, per class (HEM subjects, then ALL, in sorted order), as many
    subjects with replacement as the class has."""
    names = np.unique(subjects.astype(str))
    label_of = {name: y[subjects == name][0] for name in names}
    rng, draws = np.random.default_rng(seed), np.zeros((n_boot, len(names)), dtype=int)
    for label in (0, 1):
        members = np.flatnonzero([label_of[name] == label for name in names])
        picked = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        np.add.at(draws, (np.arange(n_boot)[:, None], picked), 1)
    return names, draws


@pytest.mark.parametrize(
    "name, fn",
    [
        ("accuracy", lambda t, p, s: accuracy_score(t, p)),
        ("weighted_f1", lambda t, p, s: f1_score(t, p, average="weighted")),
        ("roc_auc", lambda t, p, s: roc_auc_score(t, s)),
        ("balanced_accuracy", lambda t, p, s: balanced_accuracy_score(t, p)),
        ("sensitivity", lambda t, p, s: recall_score(t, p, pos_label=1)),
        ("specificity", lambda t, p, s: recall_score(t, p, pos_label=0)),
    ],
)
def test_vectorised_replicates_equal_explicit_resampling(name, fn):
    """Each vectorised replicate equals scikit-learn on the cells of whole subjects, each drawn as often as
    the seeded, class-stratified draw says (so every replicate holds both classes)."""
    y, pred, score, subj = synthetic(n_subjects=8, n_cells=600)
    fast = bootstrap_ci(y, pred, subj, metric=name, y_score=score, n_boot=40, seed=3, return_values=True)
    names, draws = _subject_draws(y, subj, 40, 3)
    explicit = []
    for counts in draws:
        cells = np.concatenate([np.repeat(np.flatnonzero(subj == n), k) for n, k in zip(names, counts, strict=True)])
        assert set(y[cells]) == {0, 1}
        explicit.append(fn(y[cells], pred[cells], score[cells]))
    np.testing.assert_allclose(fast["values"], explicit, atol=1e-12)
    assert fast["low"] == pytest.approx(np.quantile(explicit, 0.025))
    assert fast["high"] == pytest.approx(np.quantile(explicit, 0.975))


def test_subject_bootstrap_wider_than_cell_bootstrap():
    """Two subjects per class, very different sizes and accuracies: subject-level variation dominates.

    A cell-level bootstrap (each cell its own 'subject') treats the 1,200 cells as independent and
    gives a narrow interval; the subject bootstrap reflects that only four patients were seen.
    """
    blocks = [  # (subject, label, n_cells, n_correct)
        ("H1", 0, 500, 475),  # 95 % correct
        ("H2", 0, 60, 18),  # 30 %
        ("A1", 1, 600, 540),  # 90 %
        ("A2", 1, 40, 8),  # 20 %
    ]
    y, pred, subj = [], [], []
    for name, label, n, correct in blocks:
        y += [label] * n
        pred += [label] * correct + [1 - label] * (n - correct)
        subj += [name] * n
    y, pred, subj = np.array(y), np.array(pred), np.array(subj)
    by_subject = bootstrap_ci(y, pred, subj, n_boot=1000, seed=0)
    by_cell = bootstrap_ci(y, pred, np.arange(len(y)), n_boot=1000, seed=0)
    assert by_subject["estimate"] == pytest.approx(by_cell["estimate"]) == pytest.approx(1041 / 1200)
    width_subject = by_subject["high"] - by_subject["low"]
    width_cell = by_cell["high"] - by_cell["low"]
    assert width_cell < 0.05
    assert width_subject > 3 * width_cell


def test_bootstrap_seeded_reproducible():
    y, pred, score, subj = synthetic()
    a = bootstrap_ci(y, pred, subj, "roc_auc", y_score=score, n_boot=300, seed=7, return_values=True)
    b = bootstrap_ci(y, pred, subj, "roc_auc", y_score=score, n_boot=300, seed=7, return_values=True)
    c = bootstrap_ci(y, pred, subj, "roc_auc", y_score=score, n_boot=300, seed=8, return_values=True)
    assert a == b
    assert a["values"] != c["values"]


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    """Same seed, same interval; another seed, another draw; the estimate inside its interval (the speed of the
    bootstrap is a benchmark's figure, not a test's)."""
    y, pred, score, subj = synthetic(n_subjects=14, n_cells=3500)
    for metric in BOOTSTRAP_METRICS:
        a, b, c = (bootstrap_ci(y, pred, subj, metric=metric, y_score=score, n_boot=200, seed=s) for s in (1, 1, 2))
        assert a == b and a != c, metric
        assert a["low"] <= a["estimate"] <= a["high"], (metric, a)


def test_bootstrap_errors():
    y, pred, score, subj = synthetic(n_subjects=4, n_cells=80)
    with pytest.raises(DataError, match="metric='f2'"):
        bootstrap_ci(y, pred, subj, metric="f2")
    with pytest.raises(DataError, match="for that metric, y_score"):
        bootstrap_ci(y, pred, subj, metric="roc_auc")
    with pytest.raises(DataError, match="needs subjects"):
        bootstrap_ci(y, pred, None)
    with pytest.raises(DataError, match="metrics: accuracy"):
        bootstrap_ci(y, pred, subj, metric=lambda t, p, s: 0.0)  # callables are not accepted
    with pytest.raises(DataError, match="n_boot=0"):
        bootstrap_ci(y, pred, subj, n_boot=0)
    with pytest.raises(DataError, match="n_boot=2.5"):
        bootstrap_ci(y, pred, subj, n_boot=2.5)
    with pytest.raises(DataError, match="n_boot=0"):
        bootstrap_ci(y, pred, subj, n_boot=0)
    with pytest.raises(DataError, match="alpha=1.5"):
        bootstrap_ci(y, pred, subj, alpha=1.5)
    mixed = subj.copy()
    mixed[(y == 0)] = "S01"  # S01 is an ALL subject; now it also has HEM cells
    with pytest.raises(DataError, match="S01"):
        bootstrap_ci(y, pred, mixed)
    # without stratification a mixed subject is allowed
    assert bootstrap_ci(y, pred, mixed, stratify=False, n_boot=20)["stratified"] is False


def test_evaluate_with_ci():
    y, pred, score, subj = synthetic()
    out = evaluate_with_ci(y, pred, subj, y_score=score, n_boot=200)
    assert set(out["ci"]) == {"accuracy", "weighted_f1", "roc_auc"}
    for name in ("accuracy", "weighted_f1", "roc_auc"):
        ci = out["ci"][name]
        assert ci["estimate"] == pytest.approx(out[name])
        assert ci["low"] <= out[name] <= ci["high"]
    json.dumps(out)
    assert evaluate_with_ci(y, pred, subj, n_boot=50)["ci"]["roc_auc"] is None


# --------------------------------------------------------------------------------------------------
# patient-level aggregation
# --------------------------------------------------------------------------------------------------
def test_patient_level_mean_and_vote_differ():
    # P1 (ALL): 3 cells barely below 0.5 and 1 very confident -> mean 0.6 (ALL), vote 1/4 (HEM)
    # P2 (HEM): clearly HEM either way
    scores = [0.45, 0.45, 0.45, 1.0, 0.1, 0.2]
    labels = [1, 1, 1, 1, 0, 0]
    subjects = ["P1", "P1", "P1", "P1", "P2", "P2"]
    mean = patient_level(labels, scores, subjects, method="mean")
    vote = patient_level(labels, scores, subjects, method="vote")
    assert list(mean.columns) == ["subject", "label", "n_cells", "mean_prob", "frac_pred_all", "pred"]
    p1m = mean.set_index("subject").loc["P1"]
    p1v = vote.set_index("subject").loc["P1"]
    assert p1m["n_cells"] == 4 and p1m["label"] == 1
    assert p1m["mean_prob"] == pytest.approx(0.5875)
    assert p1m["frac_pred_all"] == pytest.approx(0.25)
    assert p1m["pred"] == 1 and p1v["pred"] == 0
    assert patient_level_metrics(mean)["accuracy"] == 1.0
    vm = patient_level_metrics(vote)
    assert vm["accuracy"] == 0.5 and vm["balanced_accuracy"] == 0.5
    assert vm["sensitivity"] == 0.0 and vm["specificity"] == 1.0
    assert vm["confusion_matrix"] == [[1, 0], [1, 0]]
    assert vm["n_subjects"] == 2 and vm["method"] == "vote" and vm["threshold"] == 0.5


def test_patient_level_threshold_is_strict():
    df = patient_level([1, 1], [0.5, 0.5], ["P", "P"], method="mean", threshold=0.5)
    assert df.loc[0, "pred"] == 0 and df.loc[0, "frac_pred_all"] == 0.0


def test_patient_level_mixed_labels_names_subject():
    with pytest.raises(DataError, match="P7"):
        patient_level([0, 1, 0], [0.1, 0.9, 0.2], ["P7", "P7", "P8"])
    with pytest.raises(DataError, match="method='median'"):
        patient_level([0], [0.1], ["P"], method="median")
    with pytest.raises(DataError, match=r"different lengths \[1, 2\]"):
        patient_level([0, 1], [0.1, 0.9], ["P"])
    with pytest.raises(DataError, match="threshold=1.5"):
        patient_level([0], [0.1], ["P"], threshold=1.5)

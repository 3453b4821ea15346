# %% [markdown]
# # 10. Patients, imbalance and calibration
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/main/notebooks/10_patients_calibration.ipynb)
#
# The earlier chapters scored the classifier cell by cell, at the fixed threshold 0.5. A clinic asks three
# other questions, and this chapter answers each with the same fine-tuned models:
#
# 1. **Patients, not cells.** A diagnosis is made per person. How do we turn hundreds of cell
#    probabilities into one decision, and how many people does the test set actually let us judge?
# 2. **Imbalance.** About two training cells in three are ALL. Does the model lean towards ALL, and do
#    the usual remedies (a class-weighted loss, XGBoost's `scale_pos_weight`, a threshold chosen on
#    validation) change that on people it has never seen?
# 3. **Calibration.** When the model says "p(ALL) = 0.9", is it right nine times in ten? Can we repair
#    its probabilities with the validation subjects, and does the repair survive on the test subjects?
#
# One rule holds throughout: anything *chosen* (a threshold, a calibration map) is chosen on the
# **validation** subjects and then applied unchanged to the **test** subjects.

# %%
# Setup: on Colab this installs allkit and fetches C-NMC 2019 (kagglehub); elsewhere it only prints the run card.
try:
    import allkit  # noqa: F401
except ImportError:
    %pip install -q "allkit[download,offline] @ git+https://github.com/allkit/allkit"
from allkit.study.book import setup

ctx = setup("10_patients_calibration")

# %% [markdown]
# Two fine-tunes are used: the paper's recipe, and the same recipe with a **class-weighted** loss (each
# HEM cell's error counts more, in inverse proportion to the class sizes). Both use the same cells, the
# same subject-wise split and the same seed; they are loaded from `runs/<profile>/experiments/` if an
# earlier chapter (or `allkit experiments`) already trained them, and trained now otherwise.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import binomtest

from allkit import metrics
from allkit.constants import CLASS_NAMES
from allkit.study import calibration, plots
from allkit.study.experiments import Variant, format_rows, score_row

paper = ctx.variant(Variant("paper"), progress=False)
weighted = ctx.variant(Variant("class-weighted", class_weight="balanced"), progress=False)
card = paper.meta["run_card"]
n_boot, seed = ctx.profile.n_boot, ctx.profile.seed
print(f"Backbone: {card['backbone']} ({card['weights_note'] or card['weights'] + ' weights'})")
print(f"Device: {card['device']}; profile {card['profile']}, {card['image_size']} px, "
      f"{ctx.profile.epochs} epoch(s) per fine-tune")
print(f"Data: {'SYNTHETIC stand-in' if card['synthetic'] else 'real C-NMC 2019 cells'} ({card['data']})")

frames = {split: paper.frame(split) for split in ("train", "val", "test")}
for split, frame in frames.items():
    people = frame.groupby("subject")["label"].first()
    healthy = sorted(people[people == 0].index)
    print(f"{split:<5} {len(frame):>5} cells ({int(frame.label.sum())} ALL / {int((frame.label == 0).sum())} HEM) "
          f"from {len(people)} subjects: {int(people.sum())} ALL patient(s), {len(healthy)} healthy donor(s) "
          f"{healthy}")
where = f"{card['backbone']}, {card['profile']} profile{', SYNTHETIC data' if card['synthetic'] else ''}"

# %% [markdown]
# Read the last lines carefully: they say **who** is in each part. Every C-NMC subject is either an ALL
# patient or a healthy donor, and all HEM cells of a part come from its healthy donor(s). On the real
# fold-1 sample (14 subjects, only 3 of them healthy) the subject split puts **one healthy donor in each
# part**, so every HEM number below (specificity, the HEM side of calibration) is really a statement
# about *one* person's cells, and changes if a different healthy person happens to be held out.
#
# ## 1. One diagnosis per person
#
# Two simple rules turn a person's cell probabilities into a diagnosis:
#
# - **mean probability**: average p(ALL) over the person's cells; ALL if the mean is above 0.5;
# - **majority vote**: call each cell (p(ALL) > 0.5), then ALL if more than half of the cells are ALL.
#
# Both are computed by `allkit.metrics.patient_level`, for the CNN alone and for the hybrid (XGBoost on
# the CNN's features), on the validation and the test subjects.

# %%
models = {"CNN alone": paper.cnn_proba, "Hybrid": paper.hybrid_proba}
tables = []
for split in ("val", "test"):
    frame = frames[split]
    for model, proba in models.items():
        p = proba(split)
        by_mean = metrics.patient_level(frame.label, p, frame.subject, method="mean")
        by_vote = metrics.patient_level(frame.label, p, frame.subject, method="vote")
        tables.append(pd.DataFrame({
            "split": split, "model": model, "subject": by_mean.subject,
            "true": by_mean.label.map(dict(enumerate(CLASS_NAMES))), "cells": by_mean.n_cells,
            "mean p(ALL)": by_mean.mean_prob.round(3), "fraction called ALL": by_mean.frac_pred_all.round(3),
            "decision (mean)": by_mean.pred.map(dict(enumerate(CLASS_NAMES))),
            "decision (vote)": by_vote.pred.map(dict(enumerate(CLASS_NAMES))),
        }))
patients = pd.concat(tables, ignore_index=True)
patients.set_index(["split", "model", "subject"])

# %% [markdown]
# And the patient-level score: how many people each rule diagnoses correctly.

# %%
summary = []
for (split, model), group in patients.groupby(["split", "model"], sort=False):
    p = models[model](split)[:, 1]
    cell_accuracy = float(np.mean((p > 0.5) == (frames[split].label.to_numpy() == 1)))
    for rule in ("mean", "vote"):
        right = int((group[f"decision ({rule})"] == group["true"]).sum())
        summary.append({"split": split, "model": model, "rule": rule, "correct": right, "subjects": len(group),
                        "subject-level accuracy": right / len(group), "cell-level accuracy": cell_accuracy})
summary = pd.DataFrame(summary).set_index(["split", "model", "rule"])
display(summary.round(3))

n_test = int(summary.loc[("test", "Hybrid", "mean"), "subjects"])
k_test = int(summary.loc[("test", "Hybrid", "mean"), "correct"])
exact = binomtest(k_test, n_test).proportion_ci(confidence_level=0.95, method="exact")
needed = int(np.ceil(np.log(0.025) / np.log(0.9)))
print(f"Hybrid, mean rule, test: {k_test} of {n_test} people right. The exact (Clopper-Pearson) 95% interval "
      f"for the subject-level accuracy is [{exact.low:.2f}, {exact.high:.2f}].")
print(f"To show subject-level accuracy above 0.9 with 95% confidence, even a flawless model needs {needed} "
      f"test subjects, all diagnosed correctly -- and as many healthy donors again to say the same of "
      f"specificity.")

# %% [markdown]
# Compare the last two columns: averaging many cells cancels cell-by-cell noise, so a model can diagnose
# every person correctly while misclassifying a large share of cells; it cannot cancel a bias that affects
# all cells of one person (a donor whose cells all look somewhat ALL-like to the model).
#
# Be honest about what this table is: with three test subjects it is **three decisions**. The only
# possible subject-level accuracies are 0, 1/3, 2/3 and 1, and the exact interval above spans most of
# that range. A bootstrap over three people cannot give a meaningful interval (it can only re-draw the same
# two ALL patients and the single healthy donor), so none is shown. What would be needed is printed
# above: dozens of test subjects of *each* class, i.e. the full C-NMC download (`paper` profile) and,
# better, patients from another hospital.
#
# The bar chart shows the same decisions, one bar per person: height = mean p(ALL) over that person's
# cells, colour = true class (red ALL, blue HEM), dashed line = the 0.5 threshold.

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), layout="constrained")
for row, split in enumerate(("val", "test")):
    frame = frames[split]
    for col, (model, proba) in enumerate(models.items()):
        table = metrics.patient_level(frame.label, proba(split), frame.subject, method="mean")
        plots.plot_patient_level(table, ax=axes[row, col], title=f"{model}, {split} subjects")
fig.suptitle(f"Mean p(ALL) per person ({where})");

# %% [markdown]
# A person's mean p(ALL) says more than the decision: a healthy donor at 0.45 and one at 0.05 are both
# "HEM", but the first is one staining batch away from a false diagnosis. Compare the healthy donor of
# the validation part with the healthy donor of the test part: if their bars sit at very different
# heights, the model treats the two healthy people differently, and nothing tuned on the first (a
# threshold, a calibration map) can be expected to transfer to the second. Sections 2 and 3 meet exactly
# this problem.
#
# ## 2. Class imbalance: four ways to lean less towards ALL
#
# A classifier trained on two ALL cells for every HEM cell can lower its training error by calling
# borderline cells ALL. The remedies compared here, all scored on the same test cells:
#
# - **class-weighted loss**: the CNN's cross-entropy weights each class inversely to its number of
#   training cells (the `class-weighted` variant); shown for the CNN alone and for the hybrid built on its
#   features;
# - **XGBoost `scale_pos_weight`**: XGBoost's weight of the positive class (ALL = 1),
#   `n_HEM / n_ALL` on the training cells. Because ALL is the *majority* here, the value is below 1: ALL
#   cells are weighted *down*, the opposite of the usual "rare positive" use of this knob;
# - **a threshold chosen on validation**: keep the hybrid, but call a cell ALL only above the threshold
#   that maximises balanced accuracy (mean of sensitivity and specificity) on the validation cells
#   (`allkit.study.calibration.choose_threshold`), then apply it unchanged to the test cells.

# %%
spw = calibration.scale_pos_weight(paper.labels("train"))
y_train = paper.labels("train")
print(f"Training cells: {int(y_train.sum())} ALL / {int((y_train == 0).sum())} HEM -> scale_pos_weight = "
      f"{int((y_train == 0).sum())} / {int(y_train.sum())} = {spw:.3f}")

y_val = frames["val"].label.to_numpy()
choice = calibration.choose_threshold(y_val, paper.hybrid_proba("val"), criterion="balanced_accuracy")
print(f"Threshold chosen on the validation cells: {choice.threshold:.3f} (validation balanced accuracy "
      f"{choice.value:.3f}, against {choice.at_default:.3f} at 0.5)")

settings = {  # name: (test probabilities, threshold)
    "paper recipe, CNN alone": (paper.cnn_proba("test"), 0.5),
    "paper recipe, hybrid (baseline)": (paper.hybrid_proba("test"), 0.5),
    "class-weighted loss, CNN alone": (weighted.cnn_proba("test"), 0.5),
    "class-weighted loss, hybrid": (weighted.hybrid_proba("test"), 0.5),
    f"hybrid, scale_pos_weight={spw:.2f}": (paper.hybrid_proba("test", xgb_params={"scale_pos_weight": spw}), 0.5),
    f"hybrid, threshold {choice.threshold:.2f} (from val)": (paper.hybrid_proba("test"), choice.threshold),
}
test = frames["test"]
rows, extra = [], {}
for name, (proba, threshold) in settings.items():
    rows.append(score_row(name, test, proba, threshold=threshold, n_boot=n_boot, seed=seed))
    m = metrics.evaluate(test.label, (proba[:, 1] > threshold).astype(int), proba[:, 1])
    extra[name] = {"sensitivity": m["sensitivity"], "specificity": m["specificity"],
                   "balanced acc.": m["balanced_accuracy"], "threshold": threshold}
imbalance = format_rows(rows).join(pd.DataFrame(extra).T.round(3))
imbalance

# %% [markdown]
# How to read the table (test cells; the 95% intervals come from a subject bootstrap with the profile's
# number of resamples):
#
# - **Sensitivity** is the fraction of ALL cells called ALL, **specificity** the fraction of HEM cells
#   called HEM. A model leaning towards ALL has high sensitivity and low specificity; a remedy that works
#   moves the two closer together and raises the balanced accuracy.
# - **ROC AUC** does not depend on the threshold, so the threshold row has exactly the baseline's AUC:
#   moving the threshold changes only *where* the cut is made, not how well the model ranks cells. The
#   loss weighting and `scale_pos_weight` change the model itself, so they can change the AUC.
# - **The intervals** resample people, stratified by class. With one healthy donor in the test part,
#   every bootstrap replicate holds that same donor, so the intervals show the variation among the ALL
#   patients only: they are too narrow, and specificity has no interval at all.
# - **The threshold** was fitted to the validation donor. If the test donor's cells look more ALL-like
#   to the model than the validation donor's (section 1), a threshold that was right on validation is
#   wrong on test, and no amount of validation cells from the *same* donor would reveal it.

# %%
best = imbalance["balanced acc."].idxmax()
base = imbalance.loc["paper recipe, hybrid (baseline)"]
print(f"Baseline hybrid: sensitivity {base['sensitivity']:.3f}, specificity {base['specificity']:.3f}, "
      f"balanced accuracy {base['balanced acc.']:.3f}.")
print(f"Highest balanced accuracy on the test cells: {best!r} ({imbalance.loc[best, 'balanced acc.']:.3f}); "
      f"with {test.subject.nunique()} test subjects this ranking is a hint, not a result.")

# %% [markdown]
# ## 3. Calibration: can the probability be taken at its word?
#
# A model is **calibrated** when its probabilities match frequencies: of all cells given p(ALL) = 0.8,
# about 80% are ALL. For a clinician this is what makes a number usable beyond the yes/no: "0.55" should
# mean "unsure, look again", "0.99" should mean "almost certainly malignant". An over-confident model
# says 0.99 where it is right only 70% of the time, and that number then misleads more than it helps.
#
# Two standard repairs learn a map from the model's probability to a better one, on the validation cells
# (`allkit.study.calibration.ProbabilityCalibrator`, built on scikit-learn):
#
# - **Platt scaling**: a logistic regression on the logit of p, i.e. two numbers (a slope and an offset).
#   A slope below 1 means the model was over-confident (its probabilities too close to 0 and 1), above 1
#   under-confident (too close to 0.5); the ranking of cells (the AUC) is kept.
# - **Isotonic regression**: the best non-decreasing step function from p to the observed label; more
#   flexible, needs more cells, and its flat steps tie many cells at the same probability.
#
# The **reliability diagram** plots, in ten bins of predicted p(ALL), the observed fraction of ALL against
# the mean predicted p; the diagonal is perfect calibration. The **expected calibration error** (ECE) is
# the cell-weighted mean distance of those points from the diagonal, and the **Brier score** the mean
# squared difference between p(ALL) and the 0/1 label (both: lower is better).

# %%
y_test = test.label.to_numpy()
reports, curves = {}, {}
for model, proba in models.items():
    p_val, p_test = proba("val")[:, 1], proba("test")[:, 1]
    calibrated = {}
    for method in calibration.METHODS:
        calibrator = calibration.ProbabilityCalibrator(method).fit(p_val, y_val)
        calibrated[method] = calibrator.transform(p_test)
        if method == "platt":
            confidence = "over-confident" if calibrator.slope_ < 1 else "under-confident"
            print(f"{model}: Platt slope {calibrator.slope_:.3f}, offset {calibrator.intercept_:.3f} (fitted on "
                  f"{calibrator.n_fit_} validation cells): {confidence} on the validation subjects")
    report = calibration.calibration_report(y_test, p_test, calibrated)
    report["ROC AUC"] = [metrics.evaluate(y_test, (p > 0.5).astype(int), p)["roc_auc"]
                         for p in (p_test, *calibrated.values())]
    reports[model] = report
    curves[model] = {"before": p_test, **{f"after {m.capitalize() if m == 'platt' else m}": p
                                          for m, p in calibrated.items()}}
print(f"Observed fraction of ALL among the test cells: {report.attrs['frac_all']:.3f}")
for model, report in reports.items():
    changes = ", ".join(f"{m} {'lowers' if report.loc[m, 'ece'] < report.loc['before', 'ece'] else 'raises'} it "
                        f"to {report.loc[m, 'ece']:.3f}" for m in calibration.METHODS)
    print(f"{model}: test ECE {report.loc['before', 'ece']:.3f} before calibration; {changes}")
pd.concat(reports, names=["model"]).round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), layout="constrained")
for ax, (model, probas) in zip(axes, curves.items(), strict=True):
    plots.plot_reliability_comparison(y_test, probas, ax=ax, title=f"{model}, test cells")
fig.suptitle(f"Calibration fitted on validation subjects, checked on test subjects ({where})");

# %% [markdown]
# Marker size shows how many cells fall in a bin: a point resting on a handful of cells can sit far from
# the diagonal by chance alone.

# %%
for split in ("val", "test"):
    frame = frames[split]
    hem = frame.label.to_numpy() == 0
    donors = sorted(frame.subject[hem].unique())
    p = paper.hybrid_proba(split)[:, 1]
    print(f"{split:<4} healthy donor(s) {donors}: hybrid mean p(ALL) on their {int(hem.sum())} HEM cells = "
          f"{p[hem].mean():.3f}; on the {int((~hem).sum())} ALL cells = {p[~hem].mean():.3f}")

# %% [markdown]
# Why calibration is limited here: the calibration map is learned from the validation cells, whose HEM
# cells all belong to **one** healthy donor. The map learns "how ALL-like does *this* donor look to the
# model" and corrects for it. If the test donor looks different to the model (the two lines above: compare
# the HEM means of the two parts), the correction is partly wrong for them: this is a **subject-level
# shift**, and it is the usual situation in medicine, where a new patient, a new stain batch or a new
# microscope moves the whole cloud of a person's cells at once. Whatever ECE the table shows for the test
# cells, read it as "calibrated for people like the validation donor". A trustworthy calibration needs
# many healthy donors in the calibration set (and ideally a check on data from another site), and should
# be re-checked whenever the staining or the scanner changes.
#
# ## What to take away
#
# - Report **patient-level** results next to cell-level ones, and count the people: three test subjects
#   are three decisions, whatever the number of cells.
# - Imbalance remedies (loss weights, `scale_pos_weight`, a validation threshold) trade sensitivity for
#   specificity; judge them on balanced accuracy or on both numbers, never on accuracy alone.
# - Fit thresholds and calibration maps on validation subjects only, freeze them, then test. On a split
#   with a single healthy donor per part, expect them to transfer poorly: the shift is between *people*.

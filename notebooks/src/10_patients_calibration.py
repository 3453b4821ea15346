# %% [markdown]
# # 10. Patients, imbalance and calibration
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/10_patients_calibration.ipynb)
#
# The earlier chapters scored the classifier cell by cell, at the fixed threshold 0.5, as the paper
# ({cite:p}`somu2024advancing`) does. A clinic asks three other questions, and this chapter answers each
# with the same fine-tuned models:
#
# 1. **Patients, not cells.** A diagnosis is made per person. How do we turn many cell probabilities into
#    one decision, and how many people does the test set actually let us judge?
# 2. **Imbalance.** Most training cells are ALL. Does the model lean towards ALL, and do the usual
#    remedies (a class-weighted loss, XGBoost's `scale_pos_weight`, a threshold chosen on validation)
#    change that on people it has never seen?
# 3. **Calibration.** When the model says "p(ALL) = 0.9", is it right nine times in ten? Can we repair
#    its probabilities with the validation people, and does the repair survive on the test people?
#
# One rule holds throughout: anything *chosen* (a threshold, a calibration map) is chosen on the
# **validation** people and then applied unchanged to the **test** people.
#
# **Learning goals.** After this chapter you can
# - turn cell probabilities into one diagnosis per person, and say how many people a test set must hold
#   before a patient-level accuracy means something;
# - compare remedies for class imbalance on sensitivity, specificity and balanced accuracy, and explain
#   why moving the threshold leaves the ROC AUC unchanged;
# - calibrate probabilities on validation people (Platt, isotonic), read a reliability diagram, and
#   recognise a shift between people that no calibration fitted on a few donors can repair.

# %%
# Setup. On Colab: pick the options in the form, then run. Elsewhere: the run card.
PROFILE = "auto"  #@param ["auto", "paper", "sample", "ci"]
DATA = "Kaggle"  #@param ["Kaggle", "synthetic"]
KEEP_RUNS_ON_GOOGLE_DRIVE = False  #@param {type:"boolean"}
SPEC = "allkit[download,offline] @ git+https://github.com/allkit/allkit@v0.1.0"
try:
    import allkit  # noqa: F401
except ImportError:  # on Colab: install the book's release first
    %pip install -q "{SPEC}"
    import allkit  # noqa: F401
from allkit.study.book import setup

ctx = setup("10_patients_calibration", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# Two fine-tunes are used: the paper's recipe, and the same recipe with a **class-weighted** loss (each
# HEM cell's error counts more, in inverse proportion to the class sizes). Both use the same cells, the
# same subject-wise split and the same seed; they are runs of the run store
# (`runs/<profile>/<recipe>-<key>/`), loaded if an earlier chapter (or `allkit experiments`) already
# trained them, and trained now otherwise.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import binomtest

from allkit import metrics
from allkit.constants import CLASS_NAMES
from allkit.study import calibration, plots
from allkit.study import paper as published
from allkit.study.score import format_rows, score_row

paper = ctx.run("paper", progress=False)
weighted = ctx.run(class_weight="balanced", progress=False)  # class-weighted loss
card = paper.card
n_boot, seed = ctx.config.n_boot, ctx.config.seed
print(f"Backbone: {card['backbone']} ({card['weights_note']})")
print(f"Device: {card['device']}; profile {card['profile']}, {card['image_size']} px, "
      f"{ctx.config.epochs} epoch(s) per fine-tune")
data = "SYNTHETIC stand-in" if card["synthetic"] else "real C-NMC 2019 cells"
tested = ("a separate test folder (none of its people in the data)"
          if card.get("test_data") else "people held out of the training data")
print(f"Data: {data}; test part: {tested}")

frames = {split: paper.frame(split) for split in ("train", "val", "test")}
for split, frame in frames.items():
    people = frame.groupby("subject")["label"].first()
    healthy = sorted(people[people == 0].index)
    names = f" {healthy}" if len(healthy) <= 3 else ""
    print(f"{split:<5} {len(frame):>5} cells ({int(frame.label.sum())} ALL / "
          f"{int((frame.label == 0).sum())} HEM) from {len(people)} people: "
          f"{int(people.sum())} ALL patient(s), {len(healthy)} healthy donor(s){names}")
where = f"{card['backbone']}, {card['profile']} profile"
where += ", SYNTHETIC data" if card["synthetic"] else ""

# %% [markdown]
# Read the last lines carefully: they say **who** is in each part. Every C-NMC subject is either an ALL
# patient or a healthy donor, and all HEM cells of a part come from its healthy donors. Count them. The
# training and validation parts divide the few healthy donors of the training data between them, so
# whatever is *chosen* on validation (a threshold, a calibration map) is chosen on the cells of the validation
# part's donors only, however many cells they have. The test part decides how much we can conclude:
# every HEM number below (specificity, the HEM side of calibration) is a statement about its healthy
# donors, and is as trustworthy as their number.
#
# ## 1. One diagnosis per person
#
# Two simple rules turn a person's cell probabilities into a diagnosis:
#
# - **mean probability**: average p(ALL) over the person's cells; ALL if the mean is above 0.5;
# - **majority vote**: call each cell (p(ALL) > 0.5), then ALL if more than half of the cells are ALL.
#
# Both are computed by `allkit.metrics.patient_level`. The chapter uses the mean (an exercise at the end
# tries the vote), for the CNN alone and for the hybrid (XGBoost on the CNN's features), on the
# validation and the test people. The people-level scores come from `allkit.metrics.patient_level_metrics`:
# *sensitivity* is the share of ALL patients diagnosed ALL, *specificity* the share of healthy donors
# diagnosed healthy.

# %%
models = {"CNN alone": paper.cnn_proba, "Hybrid": paper.hybrid_proba}
tables, summary = {}, []
for split in ("val", "test"):
    frame = frames[split]
    y = frame.label.to_numpy()
    for model, proba in models.items():
        p_all = proba(split)[:, 1]
        table = metrics.patient_level(frame.label, p_all, frame.subject, method="mean")
        tables[split, model] = table
        level = metrics.patient_level_metrics(table)
        cells = metrics.evaluate(y, (p_all > 0.5).astype(int))
        summary.append({
            "split": split, "model": model, "people": level["n_subjects"],
            "healthy": int((table.label == 0).sum()),
            "right": int((table.pred == table.label).sum()),
            "accuracy": level["accuracy"], "sensitivity": level["sensitivity"],
            "specificity": level["specificity"],
            "cell accuracy": cells["accuracy"],
            "cell balanced acc.": cells["balanced_accuracy"]})
summary = pd.DataFrame(summary).set_index(["split", "model"])
summary.round(3)

# %%
hybrid_test = summary.loc[("test", "Hybrid")]
k_test, n_test = int(hybrid_test["right"]), int(hybrid_test["people"])
exact = binomtest(k_test, n_test).proportion_ci(confidence_level=0.95, method="exact")
print(f"Hybrid, mean rule, test: {k_test} of {n_test} people right. The exact "
      f"(Clopper-Pearson) 95% interval for the people-level accuracy is "
      f"[{exact.low:.2f}, {exact.high:.2f}].")
sizes = tables["test", "Hybrid"].n_cells
print(f"Cells per test person: median {sizes.median():.0f}, from {sizes.min()} to "
      f"{sizes.max()}; {int((sizes < 5).sum())} of the {n_test} people have fewer "
      "than 5.")
needed = int(np.ceil(np.log(0.025) / np.log(0.9)))
print(f"To show people-level accuracy above 0.9 with 95% confidence, even a flawless "
      f"model needs {needed} test people, all diagnosed correctly (this test part has "
      f"{n_test}); to say the same of specificity, {needed} healthy donors (it has "
      f"{int(hybrid_test['healthy'])}).")

# %% [markdown]
# Compare the people columns with the cell columns. Averaging many cells cancels cell-by-cell noise, so a
# model can diagnose a person correctly while misclassifying a share of their cells; it cannot cancel a
# bias that affects all cells of one person (a donor whose cells all look somewhat ALL-like to the model).
# Where a person contributes a single cell, their diagnosis *is* that cell's call: the spread of cells per
# person printed above says how often that happens here.
#
# Be honest about what the test row is: one decision per person, and the exact interval above says how
# much a people-level accuracy from that many decisions can move. The last line says how many people and
# donors a convincing claim would need: that is the scale of the full C-NMC data set (`paper` profile)
# and, better, of patients from another hospital.
#
# The people the hybrid and the CNN alone diagnose wrongly on the test part:

# %%
named = dict(enumerate(CLASS_NAMES))
wrong = pd.concat({model: tables["test", model].query("pred != label")
                   for model in models}, names=["model", "row"])
wrong = wrong.assign(true=wrong.label.map(named)).reset_index("row", drop=True)
counts = {model: int((tables["test", model].pred != tables["test", model].label).sum())
          for model in models}
print("People wrongly diagnosed on the test part:",
      ", ".join(f"{model} {n}" for model, n in counts.items()))
wrong[["subject", "true", "n_cells", "mean_prob", "frac_pred_all"]].round(3)

# %% [markdown]
# The bar chart shows every decision, one bar per person: height = mean p(ALL) over that person's cells,
# colour = true class (red ALL, blue HEM), dashed line = the 0.5 threshold.

# %%
fig, axes = plt.subplots(2, 2, figsize=(14, 8), layout="constrained",
                         gridspec_kw={"width_ratios": [1, 4]})
for row, model in enumerate(models):
    for col, split in enumerate(("val", "test")):
        plots.plot_patient_level(tables[split, model], ax=axes[row, col],
                                 title=f"{model}, {split} people")
fig.suptitle(f"Mean p(ALL) per person ({where})");

# %% [markdown]
# A person's mean p(ALL) says more than the decision: a healthy donor at 0.45 and one at 0.05 are both
# "HEM", but the first is one staining batch away from a false diagnosis. Compare the healthy donors of
# the validation part with those of the test part: if their bars sit at very different heights, the
# model treats the healthy people it was tuned on differently from new ones, and nothing tuned on the
# first (a threshold, a calibration map) can be expected to transfer to the second. Sections 2 and 3 meet
# exactly this problem.
#
# ## 2. Class imbalance: four ways to lean less towards ALL
#
# A classifier trained on many more ALL cells than HEM cells can lower its training error by calling
# borderline cells ALL. The remedies compared here, all scored on the same test cells:
#
# - **class-weighted loss**: the CNN's cross-entropy weights each class inversely to its number of
#   training cells (`ctx.run(class_weight="balanced")`); shown for the CNN alone and for the hybrid
#   built on its features;
# - **XGBoost `scale_pos_weight`**: XGBoost's weight of the positive class (ALL = 1),
#   `n_HEM / n_ALL` on the training cells. Because ALL is the *majority* here, the value is below 1: ALL
#   cells are weighted *down*, the opposite of the usual "rare positive" use of this knob;
# - **a threshold chosen on validation**: keep the hybrid, but call a cell ALL only above the threshold
#   that maximises balanced accuracy (mean of sensitivity and specificity) on the validation cells
#   (`allkit.study.calibration.choose_threshold`), then apply it unchanged to the test cells.

# %%
y_train = paper.labels("train")
spw = calibration.scale_pos_weight(y_train)
n_all, n_hem = int(y_train.sum()), int((y_train == 0).sum())
print(f"Training cells: {n_all} ALL / {n_hem} HEM -> "
      f"scale_pos_weight = {n_hem} / {n_all} = {spw:.3f}")

y_val = frames["val"].label.to_numpy()
choice = calibration.choose_threshold(y_val, paper.hybrid_proba("val"),
                                      criterion="balanced_accuracy")
print(f"Threshold chosen on the validation cells: {choice.threshold:.5g} (validation "
      f"balanced accuracy {choice.value:.3f}, against {choice.at_default:.3f} at 0.5)")

spw_proba = paper.hybrid_proba("test", xgb_params={"scale_pos_weight": spw})
settings = {  # name: (test probabilities, threshold)
    "paper recipe, CNN alone": (paper.cnn_proba("test"), 0.5),
    "paper recipe, hybrid (baseline)": (paper.hybrid_proba("test"), 0.5),
    "class-weighted loss, CNN alone": (weighted.cnn_proba("test"), 0.5),
    "class-weighted loss, hybrid": (weighted.hybrid_proba("test"), 0.5),
    f"hybrid, scale_pos_weight={spw:.2f}": (spw_proba, 0.5),
    f"hybrid, threshold {choice.threshold:.5g} (from val)": (
        paper.hybrid_proba("test"), choice.threshold),
}
test = frames["test"]
rows, extra = [], {}
for name, (proba, threshold) in settings.items():
    rows.append(score_row(name, test, proba, threshold=threshold, n_boot=n_boot,
                          seed=seed))
    m = metrics.evaluate(test.label, (proba[:, 1] > threshold).astype(int), proba[:, 1])
    extra[name] = {"sensitivity": m["sensitivity"], "specificity": m["specificity"],
                   "balanced acc.": m["balanced_accuracy"], "threshold": threshold}
digits = {"sensitivity": 3, "specificity": 3, "balanced acc.": 3, "threshold": 5}
imbalance = format_rows(rows).join(pd.DataFrame(extra).T.round(digits))
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
# - **The intervals** resample people, ALL patients and healthy donors separately. Their width reflects
#   the variation between the test part's people: the more healthy donors it holds, the better it shows
#   how differently healthy people look to the model; with a single donor it would show none of that.
# - **The threshold** was fitted to the validation part's healthy donor(s). If the test donors' cells
#   look more (or less) ALL-like to the model than the validation donors' (section 1), a threshold that
#   was right on validation is wrong on test, and no amount of validation cells from the *same* donors
#   would reveal it.

# %%
best = imbalance["balanced acc."].idxmax()
base = imbalance.loc["paper recipe, hybrid (baseline)"]
print(f"Baseline hybrid: sensitivity {base['sensitivity']:.3f}, specificity "
      f"{base['specificity']:.3f}, balanced accuracy {base['balanced acc.']:.3f}.")
recall = {name: row["recall"] for name, row in published.TABLE_2.items()}
print(f"The paper's hybrid (Table 2, its own test split): recall of ALL (sensitivity) "
      f"{recall['ALL']:.2f}, of HEM (specificity) {recall['HEM']:.2f}, balanced "
      f"accuracy {(recall['ALL'] + recall['HEM']) / 2:.3f}.")
print(f"Always answering ALL: sensitivity 1, specificity 0, balanced accuracy 0.5, "
      f"accuracy {test.label.mean():.3f} on these test cells.")
print(f"Highest balanced accuracy on the test cells: {best!r} "
      f"({imbalance.loc[best, 'balanced acc.']:.3f}).")
for name in dict.fromkeys(["paper recipe, hybrid (baseline)", best]):
    proba, threshold = settings[name]
    calls = (proba[:, 1] > threshold).astype(int)
    ci = metrics.bootstrap_ci(test.label, calls, test.subject, "balanced_accuracy",
                              n_boot=n_boot, seed=seed)
    print(f"  {name}: balanced accuracy 95% interval over people "
          f"[{ci['low']:.3f}, {ci['high']:.3f}]")
print("A ranking is a result only where these intervals separate; where they overlap, "
      "it is a hint.")

# %% [markdown]
# The paper reports sensitivity and specificity only through its Table 2 (the recall of each class), on
# its own test split of the full data set; the printout puts them beside the baseline, together with the
# trivial rule "always answer ALL" that every remedy has to beat on balanced accuracy.
#
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
            confidence = "over" if calibrator.slope_ < 1 else "under"
            print(f"{model}: Platt slope {calibrator.slope_:.3f}, offset "
                  f"{calibrator.intercept_:.3f} (fitted on {calibrator.n_fit_} "
                  f"validation cells): {confidence}-confident on the validation people")
    report = calibration.calibration_report(y_test, p_test, calibrated)
    report["ROC AUC"] = [metrics.evaluate(y_test, (p > 0.5).astype(int), p)["roc_auc"]
                         for p in (p_test, *calibrated.values())]
    reports[model] = report
    names = {"platt": "after Platt", "isotonic": "after isotonic"}
    curves[model] = {"before": p_test, **{names[m]: p for m, p in calibrated.items()}}
print(f"Observed fraction of ALL among the test cells: {report.attrs['frac_all']:.3f}")
for model, report in reports.items():
    before = report.loc["before", "ece"]
    changes = ", ".join(
        f"{m} {'lowers' if report.loc[m, 'ece'] < before else 'raises'} it to "
        f"{report.loc[m, 'ece']:.3f}" for m in calibration.METHODS)
    print(f"{model}: test ECE {before:.3f} before calibration; {changes}")
pd.concat(reports, names=["model"]).round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), layout="constrained")
for ax, (model, probas) in zip(axes, curves.items(), strict=True):
    plots.plot_reliability_comparison(y_test, probas, ax=ax,
                                      title=f"{model}, test cells")
fig.suptitle("Calibration fitted on validation people, checked on test people "
             f"({where})");

# %% [markdown]
# Marker size shows how many cells fall in a bin: a point resting on a handful of cells can sit far from
# the diagonal by chance alone.
#
# How differently do healthy people look to the model? The hybrid's mean p(ALL) per healthy donor, in the
# validation part (the donors the calibration learnt from) and in the test part:

# %%
for split in ("val", "test"):
    table = tables[split, "Hybrid"]
    donors, patients = table[table.label == 0], table[table.label == 1]
    mean = donors.mean_prob
    spread = (f"from {mean.min():.3f} to {mean.max():.3f} (median {mean.median():.3f})"
              if len(donors) > 1 else f"{mean.iloc[0]:.3f}")
    print(f"{split:<4} {len(donors)} healthy donor(s), mean p(ALL) per donor {spread}, "
          f"{int((mean > 0.5).sum())} above 0.5; {len(patients)} ALL patient(s): "
          f"median {patients.mean_prob.median():.3f}")

# %% [markdown]
# Why calibration is limited here: the calibration map is learned from the validation cells, whose HEM
# cells all belong to the validation part's healthy donor(s). The map learns "how ALL-like do *these*
# donors look to the model" and corrects for it. If the test donors look different to the model (the two
# lines above: compare where their means lie), the correction is partly wrong for them: this is a
# **subject-level shift**, and it is the usual situation in medicine, where a new patient, a new stain
# batch or a new microscope moves the whole cloud of a person's cells at once. Whatever ECE the table shows
# for the test cells, read it as "calibrated for people like the validation donors". A trustworthy
# calibration needs many healthy donors in the calibration set (and ideally a check on data from another
# site), and should be re-checked whenever the staining or the scanner changes.
#
# ## Summary
#
# - Report **patient-level** results next to cell-level ones, and count the people: a test set gives one
#   decision per person, whatever its number of cells, and the exact (Clopper-Pearson) interval says how
#   far so few decisions can be trusted.
# - Imbalance remedies (loss weights, `scale_pos_weight`, a validation threshold) trade sensitivity for
#   specificity; judge them on balanced accuracy or on both numbers, never on accuracy alone. Moving the
#   threshold leaves the ROC AUC unchanged.
# - Calibration asks whether p(ALL) matches observed frequencies: Platt scaling or isotonic regression is
#   fitted on validation cells and checked on test cells with a reliability diagram, the ECE and the
#   Brier score.
# - Fit thresholds and calibration maps on validation people only, freeze them, then test. When the
#   validation part holds very few healthy donors, expect them to transfer poorly: the shift is between
#   *people*.
#
# Next, {doc}`11_improved_recipe` changes the fine-tuning recipe, choosing every change on validation
# people only.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-10-vote
# Diagnose the test people by **majority vote** instead of the mean probability
# (`metrics.patient_level(..., method="vote")`), for the CNN alone and the hybrid. How many people are
# right with each rule, and whose diagnosis changes?
# ```
#
# ```{solution-start} ex-10-vote
# :class: dropdown
# ```

# %%
for model, proba in models.items():
    by_mean = tables["test", model]
    by_vote = metrics.patient_level(test.label, proba("test")[:, 1], test.subject,
                                    method="vote")
    assert (by_vote.subject.to_numpy() == by_mean.subject.to_numpy()).all()
    changed = by_vote.pred.to_numpy() != by_mean.pred.to_numpy()
    right = {rule: int((t.pred == t.label).sum())
             for rule, t in (("mean", by_mean), ("vote", by_vote))}
    print(f"{model}: mean rule {right['mean']} right, vote rule {right['vote']} right, "
          f"of {len(by_vote)} people; {int(changed.sum())} diagnosis(es) change: "
          f"{by_vote.subject[changed].tolist()}")

# %% [markdown]
# The two rules disagree only for people whose cells are split: the mean can be pulled across 0.5 by a
# few very confident cells, while the vote counts every cell once, however confident. For a person with
# a single cell both rules give that cell's call. Neither rule is "right"; which one to use is a choice
# to make on validation people, before the test.
#
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise}
# :label: ex-10-youden
# Clinical papers often choose the threshold that maximises **Youden's J** = sensitivity + specificity − 1.
# Find it by hand on the validation cells of the hybrid with `sklearn.metrics.roc_curve`, compare it with
# `calibration.choose_threshold(..., criterion="youden")` and with the balanced-accuracy threshold used
# above, and apply it to the test cells.
# ```
#
# ```{solution-start} ex-10-youden
# :class: dropdown
# ```

# %%
from sklearn.metrics import roc_curve

p_val = paper.hybrid_proba("val")[:, 1]
fpr, tpr, cuts = roc_curve(y_val, p_val)
youden = calibration.choose_threshold(y_val, p_val, criterion="youden")
print(f"By hand: highest J on validation {np.max(tpr - fpr):.3f}, at ALL when "
      f"p >= {cuts[np.argmax(tpr - fpr)]:.5g}")
print(f"allkit:  J {youden.value:.3f} at ALL when p > {youden.threshold:.5g}; "
      f"balanced accuracy {choice.value:.3f} at p > {choice.threshold:.5g} "
      f"(2 x {choice.value:.3f} - 1 = {2 * choice.value - 1:.3f})")
print("Same threshold as the balanced-accuracy one:",
      youden.threshold == choice.threshold)
p_test = paper.hybrid_proba("test")[:, 1]
m = metrics.evaluate(y_test, (p_test > youden.threshold).astype(int))
print(f"Test cells at the Youden threshold: sensitivity {m['sensitivity']:.3f}, "
      f"specificity {m['specificity']:.3f}, "
      f"balanced accuracy {m['balanced_accuracy']:.3f}")

# %% [markdown]
# J = sensitivity + specificity − 1 = 2 × balanced accuracy − 1, so the two criteria rank every threshold
# the same way: the printed values satisfy that identity, and allkit, which breaks ties the same way for
# both (the best cut nearest 0.5), returns the same threshold; the last line of the first block checks it.
# Then the test numbers are those of the threshold row of section 2. `roc_curve` writes its cut as a
# cell's own score with "≥" and, where a range of cuts ties, reports the highest of them, so its number
# can differ from allkit's while J is the same.
#
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise}
# :label: ex-10-people-ci
# Section 1 gave an exact (Clopper-Pearson) interval for the hybrid's people-level accuracy on the test
# part. Compute a subject bootstrap interval for the same number with `metrics.bootstrap_ci`, treating
# each person as one "cell" (the table `tables["test", "Hybrid"]`), and one for the people-level balanced
# accuracy. How do they compare?
# ```
#
# ```{solution-start} ex-10-people-ci
# :class: dropdown
# ```

# %%
people = tables["test", "Hybrid"]
for metric in ("accuracy", "balanced_accuracy"):
    ci = metrics.bootstrap_ci(people.label, people.pred, people.subject, metric,
                              n_boot=n_boot, seed=seed)
    print(f"people-level {metric}: {ci['estimate']:.3f}, bootstrap 95% interval "
          f"[{ci['low']:.3f}, {ci['high']:.3f}] over {ci['n_subjects']} people")
print(f"exact interval of the accuracy: [{exact.low:.3f}, {exact.high:.3f}]")

# %% [markdown]
# Both intervals come from the same few dozen decisions, so both are wide: compare their widths above.
# They answer slightly different questions. The exact interval treats the people as independent draws
# with one common chance of being diagnosed right; the bootstrap resamples the people themselves, ALL
# patients and healthy donors separately (their numbers kept), and collapses to a point when every person
# is right. Balanced accuracy gives the healthy donors as much weight as all the patients together, so its
# interval depends mostly on how many donors the test part holds.
#
# ```{solution-end}
# ```

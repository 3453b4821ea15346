# %% [markdown]
# # 12. Across people: does it work for someone it has never seen?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/12_across_people.ipynb)
#
# A leukaemia classifier is only useful for the next patient, someone whose cells it has never seen. The
# paper's 0.85 {cite:p}`somu2024advancing` comes from 73 training subjects, only about a third of them
# healthy. This chapter follows the release's own folds: it trains and makes every choice on the people
# of **folds 0 and 1** of C-NMC 2019, and tests, **once per model**, on the people of **fold 2**, whom no
# step has seen (the first table below counts both, and their healthy donors). It asks what carries over
# from the training people to new ones, changes one thing at a time to find out what helps, and measures
# how many more healthy donors the method would need.
#
# **Learning goals.** After this chapter you can
# - keep a test set of *people* apart from every choice, and explain why a validation set of people is not
#   the same as one of cells;
# - read balanced accuracy, AUC and per-person accuracy next to the majority-class baseline;
# - recognise a shortcut (here: how dark the healthy donors' cells are) and test whether an augmentation
#   breaks it;
# - tell an honest negative result from a failed experiment, and say what more data would buy.
#
# The rules, fixed in advance and the same whatever the test people score:
#
# 1. Folds 0 and 1 are split **by subject** into training and validation, with at least three people of
#    each class in validation where a class has that many; fold 2 is the test part.
# 2. Every choice (which change, which threshold) is made on the **validation donors**. The test people
#    are scored once per model and never used to choose anything, except in the learning curve at the end,
#    which says plainly that it uses them.
# 3. One change at a time, on the same split and training seed as the paper's recipe.
#
# ```{warning}
# **The outputs on this page are from an earlier experiment, awaiting re-execution.** They were computed on
# the earlier data (the fold-1 sample, tested on other people's folder) by an earlier version of the code
# shown here, which now runs the release's folds protocol described above. Until this chapter is re-executed
# (and redone with cross-validation over donors), read its numbers as that earlier experiment's, and the rule
# `robust` follows as chosen on those earlier validation donors.
# ```

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

ctx = setup("12_across_people", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from allkit.study import across_study
from allkit.study.config import ACROSS, RECIPES, ROBUST_CHANGES
from allkit.study.recipe_study import recipe_config

VAL, TEST = across_study.PARTS["val"], across_study.PARTS["test"]
paper = ctx.run("paper", progress=False)
card = paper.card
external, folds = card.get("test_data"), card["split"] == "folds"
parts = {part: paper.frame(part) for part in ("train", "val", "test")}
people = pd.DataFrame(
    {
        part: {
            "people": frame.subject.nunique(),
            "healthy donors": frame.loc[frame.label == 0, "subject"].nunique(),
            "ALL patients": frame.loc[frame.label == 1, "subject"].nunique(),
            "cells": len(frame),
            "share of ALL cells": round(frame.label.mean(), 3),
        }
        for part, frame in parts.items()
    }
).T
people.index = [
    "training (folds 0-1)" if folds else "training",
    "validation (folds 0-1)" if folds else "validation",
    "test (fold 2)" if folds else "test: a separate folder" if external
    else "test (split from the same data)",
]
print(
    f"Backbone {card['backbone']} ({card['weights_note']}); "
    f"{card['profile']} profile; {card['device']}"
)
print(
    "Test part:",
    "fold 2, people no step has seen" if folds
    else "the people of a separate test folder (ALLKIT_TEST_DATA)" if external
    else f"people held out of the same data ({card['split']} split)",
)
people

# %% [markdown]
# ## A shortcut in the colours
#
# Cells of one person share a staining batch and a microscope session, so they share a colour cast. If the
# few healthy donors of the training part happen to be darker (or lighter) than the patients, "dark means
# healthy" separates the training cells perfectly well, and means nothing for the next person. The figure
# shows each person's mean cell colour (the mean over the cell's pixels, background excluded).

# %%
cache = paper.load().data.datasets["train"].cache  # every part's cells


def person_colours(frame: pd.DataFrame, part: str) -> pd.DataFrame:
    frame = frame.iloc[::3]  # every third cell is plenty for a mean
    pixels = cache.images[cache.rows(frame)]
    rgb = [
        image[image.max(axis=-1) > 10].mean(axis=0) for image in pixels
    ]  # the cell, not the black background
    colours = pd.DataFrame(rgb, columns=["R", "G", "B"]).assign(
        subject=frame.subject.to_numpy(), label=frame.label.to_numpy()
    )
    return (
        colours.groupby("subject")
        .agg(
            R=("R", "mean"), G=("G", "mean"), B=("B", "mean"), label=("label", "first")
        )
        .reset_index()
        .assign(part=part)
    )


colours = pd.concat(
    [
        person_colours(parts["train"], "training"),
        person_colours(parts["val"], "validation"),
        person_colours(parts["test"], "test"),
    ],
    ignore_index=True,
)
colours["class"] = colours.label.map({0: "HEM (healthy donor)", 1: "ALL (patient)"})
fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
sns.scatterplot(
    data=colours,
    x="R",
    y="B",
    hue="class",
    style="part",
    s=70,
    palette={"HEM (healthy donor)": "#1f77b4", "ALL (patient)": "#d62728"},
    ax=ax,
)
ax.set_xlabel("mean red value of the person's cells (0-255)")
ax.set_ylabel("mean blue value (0-255)")
ax.set_title("One point per person: the colour of their cells")
print(colours.groupby(["part", "class"])[["R", "G", "B"]].agg(["mean", "std"]).round(1))

# %% [markdown]
# Compare the healthy donors of the training part with those of the test part. Where the training donors
# sit apart from the patients and the test donors do not, colour is a shortcut the network can take in
# training and that fails on new people. Changing the colours at random during training (colour and stain
# jitter, grayscale) takes that shortcut away; whether it helps is measured next.
#
# ## The paper's recipe on people it has never seen
#
# The first rows are the baseline: the paper's recipe (chapter 4) on this split, its hybrid and its CNN
# alone, on the validation donors and on the test people. Beside accuracy: **balanced accuracy** (the mean of
# the recall of ALL cells and of HEM cells, so the larger class cannot carry it), **AUC** (how well P(ALL)
# ranks ALL cells above HEM cells, whatever the threshold), the **recall of healthy cells**, the mean over
# people of each person's accuracy, and what always answering "ALL" would score. Intervals: 95%, bootstrap
# over people.


# %%
def table(rows: list[dict]) -> pd.DataFrame:
    def cell(row, key):
        low, high = f"{key}_low", f"{key}_high"
        if row.get(key) is None:
            return "n/a"
        return (
            f"{row[key]:.3f} [{row[low]:.3f}, {row[high]:.3f}]"
            if row.get(low) is not None
            else f"{row[key]:.3f}"
        )

    return pd.DataFrame(
        [
            {
                "setting": r["setting"],
                "model": r["model"],
                "people": r["part"],
                "balanced accuracy [95% CI]": cell(r, "balanced_accuracy"),
                "AUC [95% CI]": cell(r, "roc_auc"),
                "HEM recall": round(r["hem_recall"], 3),
                "accuracy": round(r["accuracy"], 3),
                "always ALL": round(r["majority_baseline"], 3),
                "mean per person": round(r["person_mean_accuracy"], 3),
            }
            for r in rows
        ]
    )


n_boot = ctx.config.n_boot
baseline = across_study.variant_rows(
    paper, "paper's recipe", n_boot=n_boot
) + across_study.variant_rows(paper, "paper's recipe", model="CNN alone", n_boot=n_boot)
table(baseline)

# %% [markdown]
# ## One change at a time
#
# Each row below is a fine-tune of its own: the paper's recipe with one change, the same split, the same
# seed. The changes, and why each might carry over to new people:
#
# - **colour**: brightness, contrast and saturation changed at random by up to ±30% per cell;
# - **stain**: haematoxylin, eosin and DAB densities perturbed per cell (HED jitter, colour deconvolution
#   with scikit-image's matrices {cite:p}`ruifrok2001stain`); a different slide or staining batch;
# - **grayscale**: half of the training cells shown without colour, so shape and texture must carry them;
# - **geometry**: flips with probability 0.5 and rotation by any angle (a cell has no "up");
# - **lower learning rate** (10⁻⁴ instead of 10⁻³) and **frozen early layers** (the first 60% of the weights
#   keep their ImageNet values): gentler fine-tuning, less room to memorise the training people;
# - **early stopping**: keep the epoch with the lowest loss on the validation donors;
# - **balanced sampling**: healthy cells repeated until both classes are as frequent in every epoch.
#
# Each fine-tune is a run of the run store (`runs/<profile>/<recipe>-<key>/`), loaded when it is already
# there, and trained now otherwise, without a progress bar. To train all of this chapter's fine-tunes
# beforehand, with progress bars, run `allkit experiments --chapter 12` (the `sample` profile: hours on a
# CPU).

# %%
runs = {"paper": paper}
for name in ACROSS:
    runs[name] = ctx.run(name, progress=False)
rows = []
for name, run in runs.items():
    rows += across_study.variant_rows(run, name, n_boot=n_boot)
ablation = pd.DataFrame(rows)
table(rows)

# %%
wide = ablation.pivot(
    index="setting", columns="part", values=["balanced_accuracy", "roc_auc"]
)
order = list(runs)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained", sharey=True)
for ax, metric, label in zip(
    axes, ("balanced_accuracy", "roc_auc"), ("balanced accuracy", "AUC")
):
    for part, marker, colour in ((VAL, "o", "#555555"), (TEST, "D", "#d62728")):
        ax.scatter(
            wide.loc[order, (metric, part)],
            order,
            marker=marker,
            color=colour,
            label=part,
            s=50,
        )
    ax.axvline(0.5, color="grey", lw=1, ls=":")
    ax.set_xlabel(f"{label} of the hybrid")
    ax.set_xlim(0.2, 1.0)
axes[0].set_ylabel("change to the paper's recipe")
axes[0].legend(loc="lower left", fontsize=8)
fig.suptitle(
    "What carries over: validation donors (where choices are made) "
    "and test people (scored once)"
)
# %% [markdown]
# Read the grey points first: they are all the choice can see. The red points are what each change does for
# new people. Where the two disagree, a choice made on the few validation people would have been misled;
# with so few healthy validation donors (the first table counts them), that is expected, not bad luck.
#
# ## The choice, made on the validation donors
#
# The rule, fixed in advance: rank the changes by the hybrid's balanced accuracy on the validation donors
# (AUC breaks ties); the **robust** recipe combines the changes that beat the paper's recipe there (or, if
# none does, is the best single change). The robust recipe and the paper's are then fine-tuned with more
# training seeds, because one fine-tune is one random draw.

# %%
val = ablation[ablation.part == VAL].set_index("setting")
ranked = val.drop(index="paper").sort_values(
    ["balanced_accuracy", "roc_auc"], ascending=False
)
best_change = ranked.index[0]
helped = [
    name
    for name in ranked.index
    if ranked.loc[name, "balanced_accuracy"] > val.loc["paper", "balanced_accuracy"]
]
print(
    "validation ranking:",
    ", ".join(f"{n} {ranked.loc[n, 'balanced_accuracy']:.3f}" for n in ranked.index),
)
print(f"paper's recipe on validation: {val.loc['paper', 'balanced_accuracy']:.3f}")
print(f"best single change: {best_change}")
print(f"better than the paper's on validation: {helped or 'none'}")
chosen = {k: v for name in helped or [best_change] for k, v in ACROSS[name].items()}
print("`--recipe robust` (RECIPES in allkit/study/config.py) combines:", ROBUST_CHANGES)
same = chosen == RECIPES["robust"]
print("the same as chosen here:" if same else "NOT the one chosen here:", chosen)

# %%
seeds = across_study.across_seeds(ctx.config)  # three (one in the ci profile)
seed_rows = []
for name in ["paper", "robust"]:
    for seed in seeds:
        config = recipe_config(ctx.config, name, seed)  # the split stays the profile's
        run = ctx.run(name, train_seed=config.train_seed, progress=False)
        for row in across_study.variant_rows(run, name, n_boot=n_boot):
            seed_rows.append({**row, "seed": seed})
by_seed = pd.DataFrame(seed_rows)
summary = (
    by_seed.groupby(["setting", "part"])[["balanced_accuracy", "roc_auc", "hem_recall"]]
    .agg(["mean", "std", "count"])
    .round(3)
)
summary

# %% [markdown]
# Each line is the mean (and standard deviation) over the training seeds listed. The spread between seeds
# is the size of a difference that means nothing; a change is worth keeping only where its test score
# beats the paper's by more than that, and where it also did so on the validation donors.
#
# ## Two side roads, clearly labelled
#
# **Not fine-tuned at all.** ImageNet features of the same backbone, without any fine-tuning, and a logistic
# regression fitted on the training donors' cells. If this scores as well as the fine-tuned hybrid on new
# people, the fine-tune learns the donors, not the cells.
#
# **Per-person normalisation (transductive).** Every feature centred and scaled within each person, test
# people included. This is a known C-NMC trick and it is **not** a diagnosis of one cell: it needs all cells
# of a test person at once, and it works because every C-NMC person is of one class. It is shown so that its
# number is not mistaken for the method's.

# %%
from allkit.models import build_model

run = paper.load()
imagenet = build_model(
    run.backbone, card["weights"]
)  # the same ImageNet start, never fine-tuned
side = across_study.frozen_logistic_rows(
    imagenet, run.backbone, run.data, n_boot=n_boot
) + across_study.normalised_rows(runs[best_change], best_change, n_boot=n_boot)
table(side)

# %% [markdown]
# ## How much would more healthy donors buy?
#
# The test set cannot say how far the method would get with more people; a learning curve can, if it is
# allowed to train on some of the test people. Here everyone (training, validation and test people) is
# pooled; for each number of healthy training donors (with three ALL patients per donor), 30 random
# subject-wise splits train a logistic regression on frozen ImageNet features of those people and score
# every other person. **This uses the test people for training**: it is a what-if, not a test of any
# model above.

# %%
from allkit.data import CellDataset
from allkit.hybrid import extract_features

everyone = pd.concat([parts["train"], parts["val"], parts["test"]], ignore_index=True)
pooled = extract_features(
    imagenet,
    CellDataset(cache, everyone),
    run.backbone,
    normalize=run.data.normalize,
)
donors = tuple(
    k
    for k in (1, 2, 3, 5, 8, 12)
    if k < everyone.loc[everyone.label == 0, "subject"].nunique()
)
curve = across_study.donor_curve(
    pooled, everyone, donors=donors, draws=30 if ctx.config.name != "ci" else 3
)
fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
sns.lineplot(
    data=curve.melt(id_vars=["healthy_donors", "draw"], var_name="metric"),
    x="healthy_donors",
    y="value",
    hue="metric",
    errorbar=("pi", 90),
    marker="o",
    ax=ax,
)
ax.axhline(0.5, color="grey", lw=1, ls=":")
ax.set_xlabel("healthy donors in training (three ALL patients each)")
ax.set_ylabel("score on every other person (cells)")
ax.set_title("Frozen ImageNet features + logistic regression: the donor learning curve")
curve.groupby("healthy_donors")[["roc_auc", "balanced_accuracy"]].agg(
    ["mean", "std"]
).round(3)

# %% [markdown]
# Each point is the mean over the random splits and the band covers 90% of them. A curve still rising at the
# right edge says that more healthy donors would buy more; a flat one that the features, not the number of
# people, are the limit.
#
# ## What this chapter found, in numbers

# %%
ext = (
    by_seed[by_seed.part == TEST]
    .groupby("setting")[["balanced_accuracy", "roc_auc"]]
    .mean()
)
paper_ext, robust_ext = ext.loc["paper"], ext.loc["robust"]
reached = robust_ext.balanced_accuracy >= 0.80 and robust_ext.roc_auc >= 0.85
print(f"Test people, mean over {len(seeds)} seed(s):")
print(f"  paper's recipe: balanced accuracy {paper_ext.balanced_accuracy:.3f}, "
      f"AUC {paper_ext.roc_auc:.3f}")
print(f"  robust recipe:  balanced accuracy {robust_ext.balanced_accuracy:.3f}, "
      f"AUC {robust_ext.roc_auc:.3f}")
print("Targets (balanced accuracy >= 0.80 and AUC >= 0.85):",
      "reached" if reached else "not reached")
top = curve.groupby("healthy_donors")["roc_auc"].mean()
print(f"Learning curve (frozen features): AUC {top.iloc[0]:.3f} with {top.index[0]} "
      f"healthy donor(s), {top.iloc[-1]:.3f} with {top.index[-1]}.")
spread = by_seed[by_seed.part == TEST].groupby("setting")[
    "balanced_accuracy"
].std()
gain = robust_ext.balanced_accuracy - paper_ext.balanced_accuracy
noise = spread.max()
verdict = "a gain" if gain > noise else "a loss" if gain < -noise else "no difference"
print(f"Robust minus paper, test balanced accuracy: {gain:+.3f} "
      f"(seed spread up to {noise:.3f}): {verdict}.")
bal = wide["balanced_accuracy"]
rho = bal[VAL].corr(bal[TEST], method="spearman")
print(f"The paper's recipe and its {len(bal) - 1} single changes, ranked by validation "
      f"and by test balanced accuracy: Spearman's rho = {rho:.2f}.")

# %% [markdown]
# How to read these lines. The targets are the issue's, not the paper's: the paper's 0.85 is a
# cell-level accuracy on 73 training people. A verdict of "no difference" or "a loss" for the robust
# recipe is the honest outcome of a rule fixed in advance: the choice could only see the few validation
# people (the first table counts them, and their healthy donors), and a rank correlation near zero (or
# below) says that what they favoured is not what helps the new people. The learning curve is the other
# half of the answer: where it still rises at its right edge, more people, not another recipe, is what
# this data set lacks.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-12-people
# Which test people does the paper's recipe get wrong? List, for its hybrid, every test person
# with their class, number of cells, mean P(ALL) and share of cells called right, and count the healthy
# donors whose cells are mostly called ALL.
# ```
#
# ```{solution-start} ex-12-people
# :class: dropdown
# ```

# %%
test = paper.frame("test").assign(p_all=paper.hybrid_proba("test")[:, 1])
test["right"] = (test.p_all > 0.5).astype(int) == test.label
per_person = test.groupby("subject").agg(
    label=("label", "first"),
    cells=("label", "size"),
    mean_p_all=("p_all", "mean"),
    right=("right", "mean"),
)
print(per_person.sort_values(["label", "right"]).round(3).to_string())
donors = per_person[per_person.label == 0]
print(
    f"{(donors.right < 0.5).sum()} of {len(donors)} healthy people "
    "have most cells called ALL"
)

# %% [markdown]
# The table shows whether the errors are spread over everyone or concentrated in a few people. A
# healthy person with most cells called ALL is a wrong diagnosis for that person, whatever the cell-level
# accuracy says.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-12-threshold
# Chapter 10 chose the decision threshold on the validation cells. Do it here for the paper's recipe
# (best balanced accuracy on the validation donors) and apply it to the test people. Does a threshold
# learned from a few healthy validation donors carry over?
# ```
#
# ```{solution-start} ex-12-threshold
# :class: dropdown
# ```

# %%
from allkit.study.calibration import choose_threshold

cut = choose_threshold(paper.labels("val"), paper.hybrid_proba("val")[:, 1]).threshold
for name, threshold in (("0.5", 0.5), (f"{cut:.5g} (from validation)", cut)):
    row = across_study.scores(
        paper.frame("test"), paper.hybrid_proba("test"), threshold=threshold, n_boot=200
    )
    print(
        f"threshold {name}: test balanced accuracy {row['balanced_accuracy']:.3f}, "
        f"HEM recall {row['hem_recall']:.3f}"
    )

# %% [markdown]
# A threshold moves the balance between the two kinds of error; it cannot make P(ALL) rank healthy
# people below patients (the AUC does not change). Whether the validation threshold helps the test
# people depends on whether the few validation donors resemble them, which is the problem of the whole
# chapter in one number.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-12-transductive
# Per-person normalisation has its own row above. Why is its number not the accuracy of a
# diagnosis of one new cell, and what would a clinic have to do to use it?
# ```
#
# ```{solution-start} ex-12-transductive
# :class: dropdown
# ```
#
# It centres and scales every feature with the mean and spread of that person's own cells, so one cell
# cannot be classified alone: the clinic needs many cells of the patient first, taken under the same
# conditions. What it removes is everything a person's cells share (the staining batch, the microscope,
# and any shift common to all of them); what is left is how each cell differs from that person's
# average. Its number says how well *people* are told apart from many of their cells, not how well one
# new cell is diagnosed, and it leans on every C-NMC person being of one class: with a patient whose
# sample mixes normal and malignant cells, the trick would not apply.
#
# ```{solution-end}
# ```

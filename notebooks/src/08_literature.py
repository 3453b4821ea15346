# %% [markdown]
# # 8. Against the literature: the paper's Table 3
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/08_literature.ipynb)
#
# The paper closes its results (Table 3 {cite:p}`somu2024advancing`) by setting its accuracy next to
# earlier studies of ALL cell classification on the same data set. This chapter sets this book's run
# next to every row of that table, with the information a reader needs to judge the comparison, and
# then explains why tables of accuracies from different studies compare much less than they seem to.
#
# **Learning goals.** After this chapter you can
# - set a result next to a published table with what the comparison needs: the test set, the split,
#   an interval and the majority-class baseline;
# - ask the three questions that decide whether two accuracies from different studies can be compared;
# - show in a few lines of code how a random split by cell puts the same people in training and test.

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

ctx = setup("08_literature", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# ## This book's row
#
# A row of a comparison table should say what was measured, on what, and how precisely. The paper's row
# below holds the accuracy it reports for its hybrid; this book's row is computed from the run of
# chapters 4 and 5.

# %%
import pandas as pd

from allkit import constants
from allkit.study import paper
from allkit.study.book import shown

run = ctx.run(progress=False)
card, hybrid = run.card, run.metrics["hybrid"]
test = card["counts"]["test"]
acc, f1 = hybrid["ci"]["accuracy"], hybrid["ci"]["weighted_f1"]
kind = "SYNTHETIC stand-in" if card["synthetic"] else "C-NMC 2019"
rows = pd.DataFrame({
    "Somu et al. (2024), as reported": {
        "model": "EfficientNet-B0 + XGBoost",
        "data": "C-NMC 2019 training folds; validation and test: the preliminary "
                "test set, halved",
        "accuracy": f"{paper.HYBRID_ACCURACY:.2f}",
        "weighted F1 [95% CI]": "not reported",
        "test cells / people": f"about {constants.EXPECTED_COUNTS['prelim'] // 2:,} / "
                               "not reported",
    },
    f"this book ({card['profile']} profile)": {
        "model": f"{card['backbone']} + XGBoost",
        "data": f"{kind} ({shown(card['data'])}), {card['split']} split, "
                f"{card['image_size']} px",
        "accuracy": f"{acc['estimate']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]",
        "weighted F1 [95% CI]":
            f"{f1['estimate']:.3f} [{f1['low']:.3f}, {f1['high']:.3f}]",
        "test cells / people": f"{test['cells']} / {test['subjects']}",
    },
}).T
display(rows)
print(f"This run: {card['weights_note'].split(' (')[0]}; device {card['device']}.")
if acc["n_subjects"] < 10:
    print(f"Only {acc['n_subjects']} test subjects: the intervals are themselves "
          "unreliable (see chapter 5).")

# %% [markdown]
# The brackets are 95% subject-bootstrap intervals (chapter 5): the range of accuracies one could
# plausibly have measured with other people of the same kind in the test set. The run's accuracy and the
# paper's can only be compared with that range in mind, and only as far as the two rows measure the same
# thing, which the rest of this chapter questions.
#
# How big is each hybrid? The CNN carries almost all of the parameters; the XGBoost part is a set of small
# trees (counted below).

# %% tags=["nbval-check-output"]
from allkit.study.backbones import parameter_table

sizes = parameter_table(["efficientnet_b0", "efficientnet_lite0"])
sizes[["params_imagenet_head", "params_2_classes", "paper_params", "feature_dim"]]

# %%
fitted = run.hybrid()  # the run's hybrid (chapter 5)
trees = fitted.xgb_.get_booster().get_dump()
leaves = sum(tree.count("leaf=") for tree in trees)
print(f"This run's XGBoost: {len(trees)} trees with {leaves:,} leaves in total, on "
      f"{fitted.n_features_in_} features from {card['backbone']}.")

# %% [markdown]
# ## The literature rows (the paper's Table 3)
#
# The paper's Table 3 lists the accuracy of models from earlier studies on C-NMC 2019 next to its own.
# They are quoted below as the paper reports them (`allkit.study.paper.TABLE_3`); this book has not checked them
# against the original studies, which the paper's reference list names. Below them: this run's CNN alone
# and hybrid, with their intervals, and the majority-class baseline of this run's test set.

# %%
import numpy as np

cnn_ci = run.metrics["cnn"]["ci"]["accuracy"]
baseline = hybrid["majority_baseline"]
table3 = pd.DataFrame({"accuracy": paper.TABLE_3, "95% CI": "not reported",
                       "source": "the paper's Table 3"})
source = f"this run ({card['profile']} profile, {test['subjects']} test people)"
ours = pd.DataFrame({
    "accuracy": [cnn_ci["estimate"], acc["estimate"], baseline],
    "95% CI": [f"[{c['low']:.3f}, {c['high']:.3f}]" for c in (cnn_ci, acc)] + ["none"],
    "source": [source] * 3,
}, index=[f"{card['backbone']} alone (this book)",
          f"{card['backbone']} + XGBoost (this book)",
          "always the larger class (this test set)"])
display(pd.concat([table3, ours]).round(3))

# %%
import matplotlib.pyplot as plt

names = [*paper.TABLE_3, "this run, CNN alone", "this run, hybrid"]
values = [*paper.TABLE_3.values(), cnn_ci["estimate"], acc["estimate"]]
errors = np.zeros((2, len(names)))
for i, ci in ((len(names) - 2, cnn_ci), (len(names) - 1, acc)):
    errors[:, i] = [ci["estimate"] - ci["low"], ci["high"] - ci["estimate"]]
colours = ["0.7"] * len(paper.TABLE_3) + ["tab:blue", "tab:orange"]
colours[list(paper.TABLE_3).index("Proposed Model")] = "0.45"
fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
ax.barh(range(len(names)), values, xerr=errors, color=colours, capsize=4)
for i, value in enumerate(values):
    ax.text(0.01, i, f"{value:.3f}", va="center", color="white", fontsize=8)
ax.axvline(baseline, ls="--", color="k", lw=1,
           label=f"always the larger class of this test set ({baseline:.2f})")
ax.set_yticks(range(len(names)), names)
ax.invert_yaxis()
ax.set_xlim(0, 1)
ax.set_xlabel("Accuracy on test cells")
ax.set_title(f"Table 3 (grey: as reported) and this run ({card['backbone']}, "
             f"{card['profile']} profile; bars: 95% subject bootstrap)", fontsize=9)
ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# The grey bars are accuracies as the studies reported them (the darker one, "Proposed Model", is the
# paper's hybrid); none comes with an interval. The coloured bars are this run's, with their 95%
# subject-bootstrap intervals, and the dashed line is what always answering the larger class of this
# run's test set would score. Different test sets, different baselines: the figure is a reminder of how
# much of a number depends on what it was measured on, not a verdict on any study. When you read the
# rows, ask of each the three questions below; most published tables cannot answer them, and the answers
# can change the numbers as much as the choice of network does.
#
# ### 1. Which test set?
#
# C-NMC 2019 {cite:p}`gupta2019cnmc,cnmc2019tcia` comes with three kinds of evaluation data: the
# challenge's **final test set**, whose labels were hidden during the challenge; a **preliminary test
# set**, released with labels; and the **training folds**, which many studies split themselves, often at
# random. Their sizes (the counts allkit checks a download against):

# %%
counts = constants.EXPECTED_COUNTS
print(f"training folds: {counts['training']:,} cells ({counts['training_ALL']:,} ALL / "
      f"{counts['training_HEM']:,} HEM)")
print(f"preliminary test set: {counts['prelim']:,} cells")
print(f"final test set: {counts['final']:,} cells")

# %% [markdown]
# An accuracy on the final test set, on the preliminary test set, and on a random 20% of the training
# cells are three different measurements, even with the same model. This book's test part is yet
# another one (the run card of chapter 4 says which). The C-NMC challenge ranked teams on the final test
# set with the **weighted F1** score, not accuracy, which is why this book reports both.
#
# ### 2. Were people shared between training and test?
#
# A random split of *cells* puts cells of the same person on both sides. The next cell does it on the
# data at hand and counts the people that end up in both halves.

# %%
from sklearn.model_selection import train_test_split

cells = ctx.cells.frame
train_cells, test_cells = train_test_split(cells, test_size=0.2, random_state=0,
                                           stratify=cells["label"])
shared = set(train_cells["subject"]) & set(test_cells["subject"])
print(f"Random 80/20 split of {len(cells):,} cells from {cells['subject'].nunique()} "
      f"people: {len(shared)} of the {test_cells['subject'].nunique()} people in the "
      "test part also appear in training.")

# %% [markdown]
# With a random cell split practically every test person is also a training person. The network can then
# be right for the wrong reason: it recognises the person (the staining, the microscope session, the
# patient's own cell characteristics) and, through the person, the label, since every cell of a person
# has the same label. This is **leakage**, and it inflates accuracy, sometimes by a lot; the number then
# says little about a new patient. Studies that split by subject, or test on the official test sets,
# tend to report lower numbers, and more honest ones. A high accuracy in a literature table without the
# words "split by patient" deserves suspicion. (The paper itself mentions that it found and fixed a
# subject overlap late in its work.)
#
# ### 3. What would a trivial model score?
#
# C-NMC is imbalanced: about two thirds of the training cells are ALL. A "model" that always answers ALL
# is right on every ALL cell:

# %%
share_all = counts["training_ALL"] / counts["training"]
print(f"Always answering ALL: accuracy {share_all:.3f} on the C-NMC training folds.")
print(f"Always answering the larger class of this run's test set: accuracy "
      f"{baseline:.3f} ({test['ALL']} ALL / {test['HEM']} HEM).")

# %% [markdown]
# An accuracy means something only against that baseline, and the baseline changes with the test set's
# class mix: 0.85 is a large step above 0.5 and a small one above 0.8. Balanced accuracy, the weighted F1
# score and the per-class recalls of chapter 5 are harder to flatter.
#
# ## What a fair comparison would need
#
# The same test cells for every method (ideally the C-NMC final test set, scored with weighted F1), splits
# by person for anything tuned or trained, and an interval around every number. The `paper` profile of
# this book runs the paper's protocol on the full data; its row, computed on Colab, is the one to set
# against the paper's reported accuracy. Everything in this book that differs from the paper is printed
# next to the number it affects, so that the comparison can be made knowingly.
#
# ## Summary
#
# - A row of a comparison table should say what was measured, on which cells and people, and how
#   precisely; this book's row carries subject-bootstrap intervals, the rows quoted from the paper none.
# - Three questions decide whether accuracies from different studies compare: which test set (C-NMC's
#   final or preliminary test set, or a split of the training folds), whether people were shared between
#   training and test, and what a trivial model scores there.
# - A random split by cell puts the same people on both sides (the chapter counts them): the model can
#   recognise the person instead of the disease, and that leakage inflates accuracy.
# - An accuracy means something only against the majority-class baseline of its own test set; balanced
#   accuracy, weighted F1 and per-class recalls are harder to flatter. A fair comparison needs the same
#   test cells, splits by person and an interval around every number.
#
# Next, {doc}`09_authors_code` reads the authors' published code next to the paper and measures each
# difference.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-08-trivial
# Score the trivial model "always ALL" on this run's test cells with `allkit.metrics.evaluate`:
# accuracy, balanced accuracy, weighted F1 and the recall of each class. Set them next to this run's
# hybrid. Which scores does the trivial model flatter, and which not?
# ```
#
# ```{solution-start} ex-08-trivial
# :class: dropdown
# ```

# %%
from allkit.metrics import evaluate

y_true = np.array([1] * test["ALL"] + [0] * test["HEM"])  # the test labels, by count
always_all = evaluate(y_true, np.ones_like(y_true))
keep = ["accuracy", "balanced_accuracy", "weighted_f1", "sensitivity", "specificity"]
display(pd.DataFrame({"always ALL": {k: always_all[k] for k in keep},
                      "this run's hybrid": {k: hybrid[k] for k in keep}}).round(3))

# %% [markdown]
# "Always ALL" finds every ALL cell (sensitivity 1) and clears no healthy one (specificity 0). Its
# accuracy is the share of ALL cells, and its weighted F1 is also flattered by the ALL cells it gets
# right; its balanced accuracy is exactly 0.5 whatever the class mix, which is what makes balanced
# accuracy the score to compare across test sets with different mixes. A model that does not clearly
# beat the trivial one on balanced accuracy has not learnt to tell the classes apart, whatever its
# accuracy.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-08-by-subject
# Redo the 80/20 split of question 2 *by person* instead of by cell (scikit-learn's `GroupShuffleSplit`
# with the subjects as groups, or allkit's `split_by_subject`) and count the people in both parts again.
# What else changes between the two splits?
# ```
#
# ```{solution-start} ex-08-by-subject
# :class: dropdown
# ```

# %%
from sklearn.model_selection import GroupShuffleSplit

splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
train_idx, test_idx = next(splitter.split(cells, groups=cells["subject"]))
by_person = {"train": cells.iloc[train_idx], "test": cells.iloc[test_idx]}
shared = set(by_person["train"]["subject"]) & set(by_person["test"]["subject"])
print(f"By person: {len(shared)} people in both parts.")
for name, split in (("by cell", {"train": train_cells, "test": test_cells}),
                    ("by person", by_person)):
    part = split["test"]
    print(f"{name:>9}: test part {len(part):,} cells of {part['subject'].nunique()} "
          f"people, {part['label'].mean():.0%} ALL (training part "
          f"{split['train']['label'].mean():.0%}).")

# %% [markdown]
# Split by person, no one is on both sides, as it should be. Two things change with it. The test part
# has far fewer *people*, because all cells of a person go to one side; every score on it then rests on
# those few people, which is what the subject-bootstrap intervals of this book account for. And the class
# mix of the test part is no longer under control: a random cell split can be stratified to keep the
# share of ALL equal on both sides, but a person split moves whole people, so the share can differ a lot
# from the training part's, and with it the majority-class baseline.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-08-inside
# Which rows of Table 3 lie inside the 95% interval of this run's hybrid accuracy? Does a row inside
# the interval mean that the study's model is as good as this run's?
# ```
#
# ```{solution-start} ex-08-inside
# :class: dropdown
# ```

# %%
inside = {name: acc["low"] <= value <= acc["high"]
          for name, value in paper.TABLE_3.items()}
print(f"This run's hybrid: {acc['estimate']:.3f}, 95% interval [{acc['low']:.3f}, "
      f"{acc['high']:.3f}].")
for name, value in paper.TABLE_3.items():
    print(f"  {name:<40} {value:.3f}  {'inside' if inside[name] else 'outside'}")

# %% [markdown]
# No. The interval says which accuracies this run's hybrid could plausibly have scored with other
# people of the same kind in *this run's* test part. Each row of Table 3 was measured on another test
# set, with another split and often another protocol (question 1 and 2), so a row inside the interval
# is not "as good", and a row outside it is not "better" or "worse" either: the two numbers are not
# measurements of the same thing. A comparison needs the same test cells for both models; only then does
# a paired interval of the difference say which one is better.
#
# ```{solution-end}
# ```

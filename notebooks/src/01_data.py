# %% [markdown]
# # 1. The data: C-NMC 2019
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/main/notebooks/01_data.ipynb)
#
# This notebook follows the paper's description of its data set, the C-NMC 2019 single-cell images,
# and redraws its FIG 1 (example cells of both classes). We look at what the full release contains,
# what the copy on this machine contains, and why every split in this book is made **by subject**, never
# by image. By the end you will have seen the leakage guard refuse a split that the paper's own
# numbers may have been built on.

# %%
# Setup: on Colab this installs allkit and fetches C-NMC 2019 (kagglehub); elsewhere it only prints the run card.
try:
    import allkit  # noqa: F401
except ImportError:
    %pip install -q "allkit[download,offline] @ git+https://github.com/allkit/allkit"
from allkit.study.book import setup

ctx = setup("01_data")

# %% [markdown]
# The run card above says which data this notebook read, and whether it is real. Everything below is
# computed from that data; if the card says **SYNTHETIC**, the numbers describe allkit's generated
# stand-in cells, not leukemia.
#
# ## What C-NMC 2019 is
#
# C-NMC 2019 ("Classification of Normal vs Malignant Cells in B-ALL White Blood Cancer Microscopic
# Images") was the data set of an ISBI 2019 challenge, prepared by SBILab (IIIT-Delhi) and AIIMS New
# Delhi {cite}`gupta2019cnmc,mourya2018leukemic` and published on The Cancer Imaging Archive under the
# Creative Commons Attribution 3.0 licence {cite}`cnmc2019tcia`. Each image is **one white blood cell**,
# already segmented out of a microscope image of a stained blood smear and placed on a black background,
# 450×450 pixels. Each cell is labelled either
#
# - **ALL**: a malignant lymphoblast from a patient with B-lineage acute lymphoblastic leukemia
#   (label **1** in allkit), or
# - **HEM**: a normal B lymphocyte from a healthy subject (label **0**).
#
# The label is really a label of the *subject*: every cell of a patient is called ALL, every cell of a
# healthy donor HEM. The public release has three parts:
#
# | part | what | cells |
# | --- | --- | --- |
# | training set | 73 subjects (47 ALL, 26 HEM), in three folds `fold_0`–`fold_2` | 10,661 (7,272 ALL, 3,389 HEM) |
# | preliminary test set | other subjects, labels in a CSV | 1,867 |
# | final test set | other subjects, unlabelled (the challenge's hidden test) | 2,586 |
#
# The paper trains on the training set and evaluates on the preliminary test set, the only labelled
# cells outside training. On Kaggle, where most people (and the paper's authors) get the data, the
# folders look like this:
#
# ```
# C-NMC_Leukemia/
#   training_data/fold_0/all/UID_11_10_1_all.bmp      subject 11, image 10, cell 1, ALL
#   training_data/fold_0/hem/UID_H10_43_1_hem.bmp     subject H10 (healthy), image 43, cell 1, HEM
#   training_data/fold_1/...   training_data/fold_2/...
#   validation_data/C-NMC_test_prelim_phase_data/1.bmp ... 1867.bmp
#   validation_data/C-NMC_test_prelim_phase_data_labels.csv     Patient_ID,new_names,labels (1 = ALL)
#   testing_data/C-NMC_test_final_phase_data/1.bmp ... 2586.bmp
# ```
#
# The file name carries the subject: `UID_<subject>_<image>_<cell>_<class>`, healthy subjects start
# with `H`. allkit reads the subject of every cell from it, because the subject decides how the data may
# be split. ({doc}`../book/data` explains how to download the data and where to put it.)
#
# ## What is here
#
# `allkit data check` reads every image, counts cells and subjects per class, and looks for unreadable
# files, duplicated files and subjects that appear in two folds. The notebook calls the same function
# the command uses:

# %%
from allkit.study.data_check import check_report

report = check_report(ctx.data_root, progress=False)
ctx.cells.summary()

# %% [markdown]
# One row per split, fold and class of what was found; the notes of the report (printed below)
# say what is missing compared with the public release. Per class:

# %%
# NBVAL_CHECK_OUTPUT
for name in ("ALL", "HEM"):
    print(f"{name}: {report['images'][name]} images from {report['subjects'][name]} subjects")
print(f"total: {sum(report['images'].values())} images from {sum(report['subjects'].values())} subjects")
print(f"unreadable files: {len(report['bad_files'])}")
print(f"subjects in two folds or parts: {len(report['leakage'])}")

# %%
for note in report["notes"]:
    print("note:", note)
if ctx.synthetic:
    print("These counts describe allkit's SYNTHETIC stand-in, not the C-NMC 2019 release.")

# %% [markdown]
# The copy this book was executed on (see the run card) is **fold 1 of the training set only**: a real
# but partial sample. Two consequences run through the whole book. First, with one fold there is no
# preliminary test set, so the paper's train/test protocol cannot be followed; allkit splits the present
# subjects instead (below). Second, fold 1 holds only **three healthy subjects**. Any subject-wise
# evaluation on it has one or two HEM subjects in its test part: a small, noisy basis for any claim about
# how well healthy cells are recognised.
#
# ## Cells per subject

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from allkit.study.plots import CLASS_COLORS

frame = ctx.cells.frame
palette = {"HEM": CLASS_COLORS[0], "ALL": CLASS_COLORS[1]}
per_subject = (frame.groupby(["class_name", "subject"]).size().rename("cells").reset_index()
               .sort_values(["class_name", "cells"], ascending=[True, False]))

fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
sns.barplot(data=per_subject, x="subject", y="cells", hue="class_name", palette=palette, dodge=False, ax=ax)
ax.set_xlabel("Subject (file-name id; H = healthy donor)")
ax.set_ylabel("Number of cells")
ax.set_title("Cells per subject")
ax.legend(title="class");

# %%
biggest = per_subject.sort_values("cells", ascending=False).iloc[0]
print(f"{frame.subject.nunique()} subjects; cells per subject range from {per_subject.cells.min()} "
      f"to {per_subject.cells.max()} (median {per_subject.cells.median():.0f})")
print(f"largest subject: {biggest.subject} ({biggest.class_name}) with {biggest.cells} cells, "
      f"{biggest.cells / len(frame):.0%} of all cells here")
for name in ("ALL", "HEM"):
    counts = per_subject[per_subject.class_name == name].cells
    print(f"{name}: {len(counts)} subjects, {counts.mean():.0f} cells per subject on average")

# %% [markdown]
# Each bar is one subject, red for ALL patients, blue for healthy donors. Subjects contribute very
# different numbers of cells, and the average per subject differs between the classes (printed above).
# That matters for evaluation: an accuracy computed over *cells* is dominated by the subjects with the most
# cells, so a test set of a few subjects can swing by several points depending on which subjects land in
# it. Later notebooks therefore report intervals bootstrapped over subjects, not over cells.
#
# ## Class imbalance
#
# About two thirds of the cells are ALL, in the full release and here alike:

# %%
from allkit.constants import EXPECTED_COUNTS

full_all, full_hem = EXPECTED_COUNTS["training_ALL"], EXPECTED_COUNTS["training_HEM"]
here_all, here_hem = report["images"]["ALL"], report["images"]["HEM"]
shares = pd.DataFrame({
    "data": ["full training set (published counts)"] * 2 + ["present data"] * 2,
    "class": ["ALL", "HEM"] * 2,
    "share": [full_all / (full_all + full_hem), full_hem / (full_all + full_hem),
              here_all / (here_all + here_hem), here_hem / (here_all + here_hem)],
})
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
sns.barplot(data=shares, x="share", y="data", hue="class", palette=palette, ax=ax)
ax.set_xlabel("Share of cells")
ax.set_ylabel("")
ax.set_xlim(0, 1)
ax.set_title("Class balance: ALL vs HEM")
for container in ax.containers:
    ax.bar_label(container, fmt="{:.1%}", padding=3, fontsize=8)

majority = here_all / (here_all + here_hem)
print(f"full training set: {full_all / (full_all + full_hem):.1%} ALL; present data: {majority:.1%} ALL")
print(f"a classifier that always answers 'ALL' is right on {majority:.1%} of the cells here")

# %% [markdown]
# The bars show the share of each class in the published training-set counts and in the data on this
# machine; the two agree closely. The imbalance sets the floor every result must be read against: a
# "classifier" that ignores the image and always says ALL already scores the accuracy printed above on
# these cells. The paper's 0.81 (CNN) and 0.85 (hybrid) are on its own test set, whose class mix differs,
# but the point stands: with two thirds of one class, accuracy alone flatters a model, which is why the
# later notebooks also report per-class recall, balanced accuracy and ROC AUC.
#
# ## FIG 1: what the cells look like
#
# The paper's FIG 1 shows example cells of both classes. Here are four of each, read straight from the
# files (no cropping or resizing), each from a different subject where the class has enough subjects:

# %%
from PIL import Image

from allkit.study.plots import plot_sample_grid

rng = np.random.default_rng(ctx.profile.seed)
picks = []
for label in (0, 1):
    cells = frame[frame.label == label]
    subjects = rng.permutation(sorted(cells.subject.unique()))
    for i in range(4):
        of_subject = cells[cells.subject == subjects[i % len(subjects)]]
        picks.append(of_subject.iloc[int(rng.integers(len(of_subject)))])
picks = pd.DataFrame(picks)

images = [np.asarray(Image.open(path).convert("RGB")) for path in picks.path]
titles = [f"subject {row.subject}, {img.shape[1]}×{img.shape[0]} px"
          for row, img in zip(picks.itertuples(), images)]
fig = plot_sample_grid(images, picks.label.tolist(), n_per_class=4, titles=titles,
                       title="FIG 1: C-NMC 2019 cells, HEM (top) and ALL (bottom)")

# %% [markdown]
# Top row: normal B cells from healthy donors (blue frames); bottom row: lymphoblasts from ALL patients
# (red frames); the caption under each cell gives its subject and size. Each cell is a dark,
# purple-stained blob, mostly nucleus, centred on black: everything around the cell was removed when the
# organisers segmented it. On average the lymphoblasts are somewhat larger, but individual cells overlap a
# lot, and the two classes are hard to tell apart by eye; the challenge was set up because of exactly
# that {cite}`gupta2019cnmc`.
#
# ## Why splits must go by subject
#
# The cells of one subject were stained, imaged and segmented together, and they come from one body.
# They share colour, brightness and size in ways that have nothing to do with leukemia. A quick way to
# see this is the area a cell covers in its 450×450 image, measured on 30 cells of every subject:

# %%
def cell_area(path):
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    return float((pixels.sum(axis=-1) > 30).mean())  # share of non-black pixels

sampled = frame.sample(frac=1, random_state=ctx.profile.seed).groupby("subject").head(30)
sampled = sampled.assign(area=[cell_area(p) for p in sampled.path])
order = (sampled.groupby(["class_name", "subject"]).area.median().reset_index()
         .sort_values(["class_name", "area"]).subject.tolist())

fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
sns.boxplot(data=sampled, x="subject", y="area", hue="class_name", order=order, palette=palette,
            dodge=False, ax=ax)
ax.set_xlabel("Subject")
ax.set_ylabel("Cell area (share of image)")
ax.set_title("Cell size per subject (30 cells each)")
ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0));

# %%
medians = sampled.groupby(["class_name", "subject"]).area.median()
for name in ("ALL", "HEM"):
    m = medians[name]
    print(f"{name}: median cell area per subject from {m.min():.3f} to {m.max():.3f} of the image")

# %% [markdown]
# Each box is one subject's cells (blue HEM, red ALL), sorted by median within each class. The classes
# differ on average, but the subjects of one class also differ from each other, and a subject's cells
# cluster. A network can learn such subject "fingerprints" (size, stain, background noise) as easily as
# the biology. If cells of the same subject sit in training *and* test, the test set rewards recognising
# the subject, and the score says little about a **new patient**, which is the only case that matters
# clinically.
#
# So allkit splits the **subjects**: every subject goes, with all its cells, into exactly one of train,
# validation and test, and the subjects of each class are divided separately so every part has both
# classes. With this book's profile the fractions are:

# %%
from allkit.data import split_by_subject

split = split_by_subject(frame, val_size=ctx.profile.val_size, test_size=ctx.profile.test_size,
                         seed=ctx.profile.seed)
print(f"protocol: {split.protocol}, seed {split.seed}, val {ctx.profile.val_size:.0%} and "
      f"test {ctx.profile.test_size:.0%} of each class's subjects")
for part, cells in split.parts().items():
    by_class = {name: sorted(cells[cells.class_name == name].subject.unique()) for name in ("ALL", "HEM")}
    print(f"{part:>5}: {len(cells):5d} cells | ALL subjects {', '.join(by_class['ALL'])} "
          f"| HEM subjects {', '.join(by_class['HEM'])}")
split.summary()

# %% [markdown]
# Every subject appears in exactly one line above, and the table counts the cells and subjects in each
# part and class. Note the HEM column: with three healthy subjects on the fold-1 sample, each part gets a
# single healthy donor, so the test part's HEM cells all come from one person. The split is still
# honest; it is just small, and the later notebooks say so next to every number.
#
# ### The leakage guard
#
# `split_by_subject` checks its own result, and the check is available on its own as `check_leakage`:
# it raises `SubjectLeakageError` when any subject is in two parts. Here is what happens to the split that
# is easiest to make by accident, a random split of the **cells** (stratified by class):

# %%
from sklearn.model_selection import train_test_split

from allkit.data import check_leakage, split_by_image
from allkit.errors import DataError, SubjectLeakageError

train_cells, test_cells = train_test_split(frame, test_size=0.2, random_state=ctx.profile.seed,
                                           stratify=frame.label)
shared = set(train_cells.subject) & set(test_cells.subject)
print(f"by-image split: {len(test_cells)} test cells; {test_cells.subject.isin(shared).mean():.0%} of them "
      f"belong to a subject that also has cells in training ({len(shared)} of {frame.subject.nunique()} subjects)")
try:
    check_leakage({"train": train_cells, "test": test_cells})
except SubjectLeakageError as error:
    print(f"\n{type(error).__name__}: {error}")

# %% [markdown]
# With a random split by image, essentially every test cell has siblings from the same subject in
# training, and the guard names every shared subject. allkit will only make such a split when asked
# explicitly, to measure how much it inflates scores:

# %%
try:
    split_by_image(frame)
except DataError as error:
    print(f"{type(error).__name__}: {error}")
leaky = split_by_image(frame, leaky=True)
print(f"\nwith leaky=True: protocol {leaky.protocol!r}, flagged leaky={leaky.leaky}")

# %% [markdown]
# The paper does not say how its validation and test sets were drawn from the preliminary test set; the
# authors' public code splits it by image, cell by cell. allkit's `paper` profile therefore halves the
# preliminary test set **by subject** and keeps the by-image variant only as an explicitly leaky option
# (the fine-tuning notebook uses these splits).
#
# ## Identical files
#
# `allkit data check` also hashes every file. In fold 1 of the public release a handful of cells of the
# healthy subject H10 are stored twice under different names (different image numbers, byte-identical
# pixels):

# %%
print(f"groups of byte-identical files: {len(report['duplicates'])}")
for group in report["duplicates"]:
    names = [p.rsplit("/", 1)[-1] for p in group]
    subjects = sorted({frame.set_index(frame.path.astype(str)).subject.get(p, "?") for p in group})
    print(f"  {' = '.join(names)}  (subject {', '.join(subjects)})")

if report["duplicates"]:
    a, b = report["duplicates"][0][:2]
    pair = [np.asarray(Image.open(p).convert("RGB")) for p in (a, b)]
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9), layout="constrained")
    for ax, img, path in zip(axes, pair, (a, b)):
        ax.imshow(img)
        ax.set_title(path.rsplit("/", 1)[-1], fontsize=8)
    diff = np.abs(pair[0].astype(int) - pair[1].astype(int)).sum(-1)
    axes[2].imshow(diff, cmap="gray", vmin=0, vmax=max(1, diff.max()))
    axes[2].set_title(f"absolute difference (max {diff.max()})", fontsize=8)
    for ax in axes:
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    fig.suptitle("The first duplicate pair")
else:
    print("(none in this data)")

# %% [markdown]
# The first two panels are the two files of the first pair; the third is their pixel-wise difference,
# uniformly black (a maximum of 0) because the files are identical. Because each pair lies within one
# subject, a subject-wise split always keeps both copies on the same side, so they cannot leak into a
# test set; they only give that cell double weight. allkit keeps them and reports them rather than
# silently deleting data. Duplicates *across* subjects or folds would be a real leak, and
# `allkit data check` would list them under leakage.
#
# ## Summary
#
# - C-NMC 2019 is single segmented cells, labelled by subject: ALL = 1 (patients), HEM = 0 (healthy).
# - The data here is fold 1 of the training set, with only three healthy subjects: real, but small on
#   the HEM side.
# - About two thirds of the cells are ALL, so "always ALL" is the baseline to beat.
# - A subject's cells resemble each other, so splits go by subject, and allkit refuses by-image splits
#   unless told they are leaky.
#
# Next, {doc}`02_preprocessing` follows one of these cells through the paper's preprocessing and
# augmentation.

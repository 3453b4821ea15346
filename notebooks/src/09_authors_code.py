# %% [markdown]
# # 9. The authors' code versus the paper, measured
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/09_authors_code.ipynb)
#
# A paper and the code published with it should describe the same experiment. For this paper
# ({cite:p}`somu2024advancing`) they do not quite. Reading the authors' public code next to the text, five
# choices differ from what a reader of the paper would assume:
#
# | | in the authors' code | what the method calls for |
# |---|---|---|
# | (a) | random flips and rotation also applied to the **test** cells | test cells shown as they are |
# | (b) | XGBoost fed the **1000 ImageNet logits** of a head that was never replaced | the 1280 pooled features of the fine-tuned CNN |
# | (c) | the preliminary test set split into validation and test **by image, without a seed** | a fixed split that keeps each person on one side |
# | (d) | Grad-CAM computed for **ImageNet class 181** | Grad-CAM for ALL or HEM |
# | (e) | **no ImageNet normalisation** of the input | the normalisation the pretrained weights expect |
#
# This chapter measures each one. The method: fine-tune once with the correct choices, and once more for
# each choice that changes training ((b) and (e)); choices that only change testing ((a), (c), (d)) reuse
# the correct model. Everything else is identical: the same cells, the same subject-wise split, the same
# seed, the same recipe. So any difference in the tables below is caused by that one choice (plus the
# randomness of one more fine-tune, which chapter 11 measures with more than one training seed).
#
# The second half answers a question every reader of a medical-imaging paper should ask: **how much does
# splitting by image instead of by patient inflate the score?**
#
# **Learning goals.** After this chapter you can
# - audit published code against its paper, and measure each difference with a controlled experiment
#   (one change at a time, same cells, split and seed);
# - explain why random test-time augmentation, an unseeded split and a Grad-CAM of the wrong class make a
#   reported result irreproducible or uninterpretable;
# - quantify how much a by-image split inflates a score compared with a by-subject split on the same
#   kind of test part.

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

ctx = setup("09_authors_code", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# Three fine-tunes of the paper's recipe: with the correct choices, with the ImageNet head kept (b), and
# without normalisation (e): `ctx.run()` with one setting changed each time. Each is a run of the run
# store (`runs/<profile>/<recipe>-<key>/`), loaded if an earlier chapter (or `allkit experiments`)
# already trained it, and trained now otherwise. The last lines say who is in each part: the test part
# is the one named in the run card above.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from allkit.study import paper as published
from allkit.study import pitfalls, plots
from allkit.study.score import format_rows

correct = ctx.run("paper", progress=False)
authors_head = ctx.run(head="imagenet", progress=False)  # (b) the ImageNet head kept
no_norm = ctx.run(normalize=False, progress=False)  # (e) no normalisation
card = correct.card
data = "SYNTHETIC stand-in" if card["synthetic"] else "real C-NMC 2019 cells"
print(f"Backbone: {card['backbone']} ({card['weights_note']}); device {card['device']}")
print(f"Data: {data}, {card['profile']} profile, {card['image_size']} px, "
      f"{ctx.config.epochs} epoch(s), training seed {correct.config.training_seed}")


def who(frame: pd.DataFrame) -> str:
    """Cells and people of one part of a split."""
    people = frame.groupby("subject")["label"].first()
    n_all, n_hem = int(frame.label.sum()), int((frame.label == 0).sum())
    patients, donors = int(people.sum()), int((people == 0).sum())
    return (f"{len(frame):5d} cells ({n_all} ALL / {n_hem} HEM) from {len(people)} "
            f"people: {patients} ALL patient(s), {donors} healthy donor(s)")


for part in ("train", "val", "test"):
    print(f"  {part:<5} {who(correct.frame(part))}")
external = card.get("test_data") is not None
print("The test people are", "a separate test folder: none of them is in the data"
      if external else f"held out of the training data ({card['split']} split)")
n_boot, boot_seed = ctx.config.n_boot, ctx.config.seed
pd.set_option("display.max_colwidth", 100)

# %% [markdown]
# ## One table: each of the authors' choices against the correct one
#
# Every row is the **hybrid** (CNN features → XGBoost) scored on the test people, who took no part in
# training or validation. Brackets are 95% intervals from a bootstrap that resamples *people*, not
# cells: cells of one person are not independent, so a cell-level interval would be far too narrow.
# Row (c) is different: it is one model scored on many random by-image halves of the held-out cells, so
# its brackets show how much the reported number moves from one unseeded run to the next (2.5–97.5th
# percentile of the draws), not a confidence interval.

# %%
rows = pitfalls.authors_code_rows(correct, authors_head, no_norm, n_boot=n_boot,
                                  seed=boot_seed)
spread = pitfalls.unseeded_split_spread(correct, n_draws=20)
rows.append(pitfalls.spread_row(spread, f"(c) {pitfalls.CHOICES['c']} (20 draws)"))
format_rows(rows)

# %%
base = rows[0]
for row in rows[1:]:
    if row["choice"] == "c":  # another population of cells (validation + test people)
        width = 100 * (row["accuracy_high"] - row["accuracy_low"])
        print(f"(c) the reported accuracy moves by {width:.1f} points (2.5-97.5th "
              "percentile) from one unseeded draw to another")
        continue
    change = {m: 100 * (row[m] - base[m])
              for m in ("accuracy", "weighted_f1", "roc_auc")}
    print(f"{row['setting'][:3]} accuracy {row['accuracy']:.3f} vs "
          f"{base['accuracy']:.3f}: {change['accuracy']:+.1f} points; "
          f"weighted F1 {change['weighted_f1']:+.1f}; AUC {change['roc_auc']:+.1f}")
test = correct.frame("test")
print(f"The intervals resample the {test.subject.nunique()} test people "
      f"({test.loc[test.label == 0, 'subject'].nunique()} of them healthy donors).")

# %% [markdown]
# How to read it. A change of a few points whose interval overlaps the correct row's is **not** evidence
# of an effect on this test set: which people happen to be tested, and how many cells each of them
# contributes, moves every number, and the intervals show by how much. What each choice does, whatever
# its sign here:
#
# - **(a)** makes the score a random variable: the same model, scored twice, gives two different numbers,
#   because each test cell is shown in one random pose (with black corners from the rotation) instead of
#   as it is.
# - **(b)** changes what XGBoost sees: the 1000 scores of ImageNet classes after fine-tuning (outputs 0 and
#   1 were trained to mean HEM and ALL; the other 998 are leftovers). The ImageNet outputs are a linear
#   function of the same 1280 features, so XGBoost sees a squeezed copy of them.
# - **(e)** feeds the pretrained network inputs on a different scale than it was trained on; fine-tuning
#   partly adapts to it, so its effect on a fine-tuned model is an empirical question, answered here for
#   this split and seed only.
#
# The CNN alone, with the same choices (for (b) the kept ImageNet head, read at its outputs 0 and 1):

# %%
cnn = pitfalls.cnn_rows(correct, authors_head, no_norm, n_boot=n_boot, seed=boot_seed)
format_rows(cnn)

# %%
outside = pitfalls.outside_binary(authors_head)
print(f"(b) kept ImageNet head: {outside:.1%} of the test cells have their highest "
      "score on an ImageNet class other than outputs 0 and 1; the authors' CNN-alone "
      "accuracy counts those cells wrong whatever they are.")

# %% [markdown]
# ## Beside the paper's numbers
#
# The paper reports one accuracy for the CNN alone and one for the hybrid. They were produced by the
# authors' code, with all five choices at once, on the paper's split of the full C-NMC data; ours come
# from the profile and the test people printed at the top. The table puts them side by side, with the
# score of the trivial rule "always answer the larger class of this test set", below which a classifier
# has learnt nothing useful.

# %%
test_share = float(test.label.mean())
majority = max(test_share, 1 - test_share)
ours = {"CNN alone": format_rows(cnn).iloc[0], "hybrid": format_rows(rows).iloc[0]}
beside = pd.DataFrame({
    "paper (reported)": [published.CNN_ALONE_ACCURACY, published.HYBRID_ACCURACY],
    "here, correct choices [95% CI]": [r["accuracy [95% CI]"] for r in ours.values()],
    "always the larger class": [round(majority, 3)] * 2,
}, index=list(ours)).rename_axis("accuracy")
print(f"Test cells: {len(test)}, {test_share:.1%} ALL; the larger class is "
      f"{'ALL' if test_share >= 0.5 else 'HEM'}.")
beside

# %% [markdown]
# ## (c) An unseeded by-image split: a different test set on every run
#
# The authors halved the preliminary test set into validation and test with an unseeded random split of
# images. Two consequences. First, **every run reports a different test set**, so the published number is
# one draw from a distribution. Second, the halves share patients: the validation score comes from the same
# people as the test score, so anything tuned on validation is partly tuned on the test patients. Below, the
# same fine-tuned model (trained on the training people only) is scored on 20 such draws of the cells it
# never trained on: the validation people and the test people together (seeded here, so the book can be
# rebuilt).

# %%
held_out = correct.frame("val").subject.nunique() + test.subject.nunique()
print(f"People with cells in both halves: {spread['shared_subjects'].min()}–"
      f"{spread['shared_subjects'].max()} of {held_out} held-out people")
acc = spread["accuracy"]
print(f"Test accuracy over {len(spread)} draws: mean {acc.mean():.3f}, range "
      f"{acc.min():.3f}–{acc.max():.3f} "
      f"(spread {100 * (acc.max() - acc.min()):.1f} points)")
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
sns.histplot(acc, bins=10, ax=ax)
ax.axvline(base["accuracy"], color="black", linestyle="--",
           label="the test people alone")
ax.set_xlabel("hybrid accuracy on the test half of one by-image draw")
ax.set_ylabel("number of draws")
ax.set_title(f"One model, {len(spread)} unseeded by-image test sets "
             f"({card['profile']} profile)")
ax.legend();

# %% [markdown]
# Note that the by-image halves mix the validation and the test people, so their mean is not the score
# on the test people either (the dashed line): it is a score on a different population of cells.

# %% [markdown]
# ## (d) Grad-CAM for ImageNet class 181
#
# Grad-CAM ({cite:p}`selvaraju2017gradcam`) explains *one output* of the network: the heat map shows
# which pixels raise the score of the class you ask about. The authors' code asked about output 181 of a
# 1000-output ImageNet head. Which class is that?

# %%
print(f"ImageNet class 181 is {pitfalls.imagenet_class_name(181)!r} "
      "(torchvision's ImageNet-1k class list).")

# %% [markdown]
# So their heat maps answer "where in this blood cell does the network see a Bedlington terrier?", not
# "what makes this cell look leukemic?". Below, the same model (the kept ImageNet head, fine-tuned as in
# their code) and the same test cells, explained for class 181 and for each cell's true class (outputs 0 and
# 1, which fine-tuning trained to mean HEM and ALL). The paper's FIG 5 shows heat maps of this kind; the
# authors' code computes them for class 181.

# %%
print(f"Paper, FIG 5: {published.FIGURES[5]}")
authors_cam, true_cam = pitfalls.class_181_gradcam(
    authors_head, n_per_class=ctx.config.n_gradcam // 2 or 1)
plots.plot_gradcam_comparison(
    authors_cam, true_cam,
    titles=(f"class 181 ({pitfalls.imagenet_class_name(181)})",
            "true class (HEM or ALL)"),
    title=f"Grad-CAM, same model and cells ({card['backbone']}, "
          f"{card['profile']} profile)");

# %%
def correlation(a: np.ndarray, b: np.ndarray) -> str:
    """Pixel correlation of two heat maps ("flat" where one map is constant)."""
    if a.std() == 0 or b.std() == 0:
        return "flat"
    return f"{np.corrcoef(a.ravel(), b.ravel())[0, 1]:+.2f}"


pairs = zip(authors_cam.heatmaps, true_cam.heatmaps, strict=True)
print("Pixel correlation between the class-181 and the true-class heat map, per cell:",
      ", ".join(correlation(a, b) for a, b in pairs))

# %% [markdown]
# ("flat" marks a map with no variation at all: no pixel raises that output, as happens after a very short
# fine-tune.) Where the two maps look alike, it is because both follow whatever the last convolutional
# layer finds salient in the cell; where they differ, the class-181 map is explaining a dog. Either way it is not an
# explanation of the leukemia decision, and a figure built from it cannot support a claim about which
# parts of the cell the classifier relies on.

# %% [markdown]
# ## Leakage, quantified: by image versus by subject
#
# C-NMC has many cells per person. Split the cells at random (by image) and most test cells have siblings
# from the same person in the training set: the model can recognise the *person* (staining, imaging
# session, cell size of that patient) instead of the disease. Split by subject and the test people are
# strangers, as a new patient would be.
#
# A fair comparison scores both splits on the same kind of test part. A by-image split can only test on
# cells of the training data, so both sides here keep their test part **inside the training data**: the
# by-subject side is a fine-tune of the paper's recipe whose test part is people of that data held out
# of training (`ctx.run(test="internal")`: fold 2 where the release's folds are there, as in the tables
# above; never the people of a separate test folder); the by-image side (`ctx.run(split="image")`) draws
# its parts at random from the cells of the same data, with the part sizes of a subject-wise split.
# Same recipe and seed otherwise.

# %%
internal = ctx.run(test="internal", progress=False)
leaky = ctx.run(split="image", progress=False)
for label, run in (("Split by subject", internal), ("Split by image", leaky)):
    print(f"{label}; test part: {who(run.frame('test')).strip()}")
    print(pitfalls.split_overlap(run).to_string(), end="\n\n")

# %%
leak_rows = pitfalls.leakage_rows(internal, leaky, n_boot=n_boot, seed=boot_seed)
format_rows(leak_rows)

# %%
for model in ("CNN", "hybrid"):
    honest, inflated = (r for r in leak_rows if r["model"] == model)
    gap = 100 * (inflated["accuracy"] - honest["accuracy"])
    print(f"{model:<6}: accuracy {honest['accuracy']:.3f} by subject vs "
          f"{inflated['accuracy']:.3f} by image -> leaky minus honest: {gap:+.1f} "
          f"points; AUC {honest['roc_auc']:.3f} vs {inflated['roc_auc']:.3f}")

# %% [markdown]
# The by-image score is the one a paper gets "for free" from a random split. It measures how well the
# model recognises cells of people it has already seen, which is not the clinical question; the
# by-subject score is the honest estimate for a new patient. (The two splits hold different cells in
# every part, and the by-subject one tests only the people held out of training; with the release's
# folds it also trains on folds 0 and 1 only. So part of the gap can come from which cells were drawn;
# the intervals show how much.)
#
# **What to take away.** (a) and (c) make the reported number irreproducible, (d) makes the explanation
# figure explain a dog breed, and (b) and (e) change the model that was evaluated. Compare the size of each
# row's change with the width of the intervals and with the leaky split's inflation: *who* is in the test
# set, and whether they were also in training, matters at least as much as any single modelling choice.
#
# ## Summary
#
# - Five choices in the authors' code differ from the paper's method: augmented test cells (a), XGBoost
#   on 1000 ImageNet logits (b), an unseeded by-image split (c), Grad-CAM for ImageNet class 181 (d) and
#   no ImageNet normalisation (e).
# - Each is measured by a controlled experiment: one change at a time, with the same cells, subject-wise
#   split and seed; choices that change training get their own fine-tune, the others reuse the correct
#   model.
# - A row's change is read against the subject-bootstrap intervals; (c) is shown as the spread of one
#   model's score over many by-image draws, and the maps of (d) explain a dog breed, not the diagnosis.
# - Leakage is measured with two fine-tunes whose test parts both lie inside the training data, one split
#   by image and one by subject: the difference is what having seen the person adds to the score.
#
# Next, {doc}`10_patients_calibration` turns cell probabilities into one diagnosis per person, and looks
# at class imbalance and calibration.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-09-leak-balanced
# Accuracy depends on the share of ALL cells in the test part, and the two test parts of the leakage
# comparison need not have the same share. Recompute the leakage gap with **balanced accuracy** (the mean
# of sensitivity and specificity, `sklearn.metrics.balanced_accuracy_score`) for the CNN alone and the
# hybrid, using the two fine-tunes already loaded (`internal` and `leaky`). Is the gap smaller or larger
# than in accuracy?
# ```
#
# ```{solution-start} ex-09-leak-balanced
# :class: dropdown
# ```

# %%
from sklearn.metrics import balanced_accuracy_score

for side, run in (("by subject", internal), ("by image", leaky)):
    print(f"{side:<10} test part: {run.labels('test').mean():.1%} ALL cells")
for model in ("CNN", "hybrid"):
    score = {}
    for side, run in (("by subject", internal), ("by image", leaky)):
        p_all = (run.cnn_proba if model == "CNN" else run.hybrid_proba)("test")[:, 1]
        score[side] = balanced_accuracy_score(run.labels("test"), p_all > 0.5)
    gap = 100 * (score["by image"] - score["by subject"])
    print(f"{model:<6}: balanced accuracy {score['by subject']:.3f} by subject vs "
          f"{score['by image']:.3f} by image -> {gap:+.1f} points")

# %% [markdown]
# Balanced accuracy gives each class the same weight, so a difference in the share of ALL cells between
# the two test parts no longer moves it; a model that calls almost every cell ALL scores 0.5 whatever that
# share is. Compare the two gaps printed here with the accuracy gaps above: where they agree, the
# inflation is not an artefact of the class mix; where the balanced gap is larger, accuracy was hiding
# part of it behind the majority class.
#
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise}
# :label: ex-09-random-views
# Choice (a) showed each test cell in one random pose. For the correct fine-tune, count the test cells
# whose hybrid decision (p(ALL) > 0.5) differs between the plain view and the random view
# (`correct.hybrid_proba("test")` and `correct.hybrid_proba("test", "random")`), and look at how far from
# 0.5 those cells were in the plain view.
# ```
#
# ```{solution-start} ex-09-random-views
# :class: dropdown
# ```

# %%
plain = correct.hybrid_proba("test")[:, 1]
posed = correct.hybrid_proba("test", "random")[:, 1]
flipped = (plain > 0.5) != (posed > 0.5)
print(f"{int(flipped.sum())} of {len(plain)} test cells ({flipped.mean():.1%}) change "
      "their decision when shown in a random pose")
print(f"mean |change of p(ALL)|: {np.abs(plain - posed).mean():.3f} over all cells")
if flipped.any():
    margin = np.abs(plain[flipped] - 0.5)
    print(f"the changed cells were {margin.mean():.3f} from 0.5 on average in the "
          f"plain view (all cells: {np.abs(plain - 0.5).mean():.3f})")

# %% [markdown]
# Every cell whose decision changes is a cell for which the authors' reported accuracy depended on the
# dice. They are mostly cells near the threshold, where a small change of p(ALL) is enough; a run with
# another random pose (or another random seed) would count some of them right and others wrong, which is
# why (a) makes the reported number irreproducible even with the same weights.
#
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise}
# :label: ex-09-which-test
# The leakage comparison used a by-subject fine-tune (`internal`) whose test part is always people held
# out of the training data, even where a separate test folder (`ALLKIT_TEST_DATA`) gives the `correct`
# fine-tune other people to be scored on. Print who is in each of the two test parts and the hybrid's
# accuracy on each. Why would comparing the by-image split with a separate folder's people mix two
# effects?
# ```
#
# ```{solution-start} ex-09-which-test
# :class: dropdown
# ```

# %%
for label, run in (("held out of the data (internal)", internal),
                   ("the chapter's test people", correct)):
    frame = run.frame("test")
    accuracy = np.mean((run.hybrid_proba("test")[:, 1] > 0.5) == frame.label.to_numpy())
    print(f"{label}:\n  {who(frame).strip()}\n  hybrid accuracy {accuracy:.3f}")

# %% [markdown]
# Without a separate test folder, `internal` has the same split as `correct` and the two test parts are
# the same people. With one, the test parts differ in who is in them, in their share of ALL cells, and
# in how the folder's slides were stained and imaged. A model can score differently on them for any of
# those reasons, without any leakage. The by-image split tests on cells of the training data, so the only
# fair honest counterpart is a by-subject split that also tests on people of that data: then the gap
# between the two is the effect of *having seen the person*, and nothing else.
#
# ```{solution-end}
# ```

# %% [markdown]
# # 7. Which backbone? The paper's Table 1
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/07_backbones.ipynb)
#
# Before settling on EfficientNet-B0, the paper {cite:p}`somu2024advancing` compares it with other
# well-known CNNs in its Table 1: the accuracy of the hybrid built on each. This chapter counts their
# parameters, then runs the whole method (same split, same recipe, same XGBoost) with every backbone
# whose ImageNet weights this machine can get, sets each result next to the paper's, and says plainly
# which rows could not be computed here and why.
#
# **Learning goals.** After this chapter you can
# - compare CNN backbones by what can be computed from their architectures alone: parameters, input
#   size, length of the feature vector;
# - swap the backbone of the hybrid and set the result next to the paper's Table 1, with an interval
#   and the majority-class baseline;
# - say what a comparison of one run per backbone can and cannot show, and why the ImageNet weights are
#   part of the backbone.

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

ctx = setup("07_backbones", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# ## The candidates
#
# - **VGG16** {cite:p}`simonyan2015vgg`: thirteen 3×3 convolutions and three huge fully connected layers.
# - **ResNet** {cite:p}`he2016resnet`: residual connections that let very deep networks train.
# - **Inception-v3** {cite:p}`szegedy2016inception`: parallel convolutions of several sizes per block,
#   made for 299-pixel images.
# - **EfficientNet-B0** {cite:p}`tan2019efficientnet`: inverted-residual blocks
#   {cite:p}`sandler2018mobilenetv2` with squeeze-and-excitation {cite:p}`hu2018senet`, scaled for
#   accuracy per parameter. The paper's choice.
# - **EfficientNet-Lite0**: B0's mobile sibling (no squeeze-and-excitation, ReLU6), added by this book
#   because its ImageNet weights install with pip and so work without internet.
#
# Their sizes, computed from the architectures themselves (no weights needed), next to the figures the
# paper quotes where it quotes one:

# %% tags=["nbval-check-output"]
from allkit.study.backbones import parameter_table

sizes = parameter_table()
sizes[["params_imagenet_head", "params_2_classes", "paper_params", "input_size",
       "feature_dim", "note"]]

# %% [markdown]
# `params_imagenet_head` counts the network with its original 1000-class ImageNet head, which is how
# papers usually quote sizes; `params_2_classes` is the network this book trains (HEM/ALL head). The
# `paper_params` column is the paper's figure where it gives one; for VGG16 it gives only a lower bound
# (the `note` column says so), which is shown but not compared. `feature_dim` is the length of the
# feature vector XGBoost receives: 1280 for the EfficientNets, 4096 for VGG16's last hidden layer. EfficientNet-B0 was designed to match the ImageNet
# accuracy of much larger networks with a fraction of their parameters {cite:p}`tan2019efficientnet`; a
# small network is also faster to fine-tune, which matters on Colab and even more on a CPU.
#
# ## Running the method with each backbone
#
# `compare_backbones` fine-tunes each backbone with this profile's recipe and split, fits XGBoost on its
# features and evaluates both on the same test cells. Each backbone is a run of the run store (chapter
# 4), so a second execution only reads them. Two details:
#
# - **Image size.** Every backbone gets the profile's image size, except in the `paper` profile, where
#   each gets its own native size (299 px for Inception-v3, 224 px for the others). Inception-v3 also
#   cannot be trained below 299 px at all (its auxiliary classifier needs it), so it gets 299 px in every
#   profile; the `note` column says so.
# - **Weights.** Each backbone needs its ImageNet weights from torchvision's servers. Where they cannot
#   be downloaded, the row says so and stays empty: no number is invented. The finished run of chapters
#   4 to 6 is reused for its own backbone instead of being trained twice.
#
# The paper's Table 1 stands in the column `paper (Table 1)`; EfficientNet-Lite0 is not in the paper.

# %%
import pandas as pd

from allkit import constants
from allkit.study import paper
from allkit.study.backbones import compare_backbones

run = ctx.run(progress=False)
table = compare_backbones(ctx.config, ctx.data_root, runs=ctx.runs_dir, progress=False)
table["paper (Table 1)"] = table["backbone"].map(paper.TABLE_1)
columns = ["backbone", "status", "paper (Table 1)", "cnn_accuracy", "hybrid_accuracy",
           "low", "high", "image_size", "test_cells", "test_subjects", "seconds"]
shown_table = table[columns].round(3)
counts = ["image_size", "test_cells", "test_subjects"]
shown_table[counts] = shown_table[counts].astype("Int64")
display(shown_table.astype(object).fillna("—").set_index("backbone"))
print(f"Always answering the larger class of these test cells: accuracy "
      f"{run.metrics['hybrid']['majority_baseline']:.3f}.")

# %%
computed = table[table.status == "computed"]
missing = table[table.status != "computed"]
card = run.card
kind = "SYNTHETIC stand-in" if card["synthetic"] else "real C-NMC 2019 cells"
print(f"Data: {kind}, {card['profile']} profile, device {card['device']}.")
print(f"Computed here: {', '.join(computed.backbone) or 'none'}.")
if len(missing):
    print(f"Not computed here: {', '.join(missing.backbone)} "
          f"({missing.status.iloc[0]}). Run this notebook on Colab (or anywhere with "
          "internet) to fill those rows.")
for _, row in missing.iterrows():
    print(f"  {row.backbone}: {row.note.split('; ')[-1].split(' (')[0]}")

# %% [markdown]
# The printout says which rows are real measurements on this machine. On a machine without internet only
# EfficientNet-Lite0 can be run: torchvision's ImageNet weights for the other networks are downloads, and
# training them from random weights would measure something else entirely (the paper starts from
# ImageNet). On Colab every row is computed.

# %%
import matplotlib.pyplot as plt

from allkit.study import plots

if len(computed):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    plots.plot_backbone_comparison(computed.drop(columns=["low", "high"]),
                                   metric="cnn_accuracy", ax=axes[0], title="CNN alone")
    plots.plot_backbone_comparison(computed, metric="hybrid_accuracy", ax=axes[1],
                                   title="Hybrid (+ XGBoost)")
    for ax in axes:
        ax.set_ylabel("Test accuracy")
        ax.axhline(run.metrics["hybrid"]["majority_baseline"], ls="--", color="k", lw=1)
    synthetic = ", SYNTHETIC data" if card["synthetic"] else ""
    fig.suptitle(f"Test accuracy per backbone ({card['profile']} profile{synthetic}; "
                 "dashed: always the larger class)")

# %% [markdown]
# One bar per backbone that could be run: the accuracy of the fine-tuned CNN on its own (left) and of the
# hybrid built on it (right), on the same test cells, with the 95% subject-bootstrap interval of the
# hybrid as error bars; the dashed line is the majority-class baseline. Where only one backbone could
# be run, the figure is a single bar: the comparison itself needs the other rows.
#
# How much to read into differences between bars: the backbones share the test cells, so a difference is
# not pure noise, but the intervals are as wide as in chapter 5 for the same reason (the test people,
# some with many cells and many with few), and one run per backbone with one seed says nothing about how
# much each result would move with another seed. And the profile may train on less than the paper did:

# %%
train = card["counts"]["train"]
print(f"This profile trains each backbone for {ctx.config.epochs} epoch(s) on "
      f"{train['cells']} cells of {train['subjects']} people; the paper: "
      f"{constants.EPOCHS} epochs on the C-NMC training folds.")

# %% [markdown]
# Less training favours whichever backbone adapts fastest, not the one that ends best. A ranking of
# backbones needs the `paper` profile, several seeds, and a test set with many people.
#
# The paper's Table 1, in the column `paper (Table 1)` of the table above, was measured on the full data set with
# the paper's own split; the figures in the other columns are measured in this book's profile, on its
# test people, and can be set next to the paper's only with that difference in mind.
# {ref}`ex-07-size` sets the paper's ranking against the sizes of the networks.
#
# ## Summary
#
# - The candidates (VGG16, ResNet, Inception-v3, EfficientNet-B0 and the book's EfficientNet-Lite0) are
#   first compared by what the architectures alone give: parameters, input size and the length of the
#   feature vector XGBoost receives.
# - `compare_backbones` runs the whole method with each backbone on the same split, recipe and test
#   cells; where a backbone's ImageNet weights cannot be downloaded, its row stays empty rather than
#   being trained from random weights.
# - Each result is read beside the paper's Table 1, the hybrid's subject-bootstrap interval and the
#   majority-class baseline, remembering that the paper trained on the full data with its own split.
# - One run per backbone, with one seed and a profile that may train less than the paper, cannot rank
#   backbones: that needs the `paper` profile, several seeds and a test set with many people.
#
# Next, {doc}`08_literature` sets this book's run next to the earlier studies of the paper's Table 3.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-07-pretrained
# What do the ImageNet weights bring? Without any fine-tuning, fit the hybrid's XGBoost
# (`HybridClassifier`, as in chapter 5) on the features of 240 training cells from this run's backbone
# twice: with random weights and with its ImageNet weights. Score both on 160 validation cells and on
# 160 test cells (measuring only: nothing is chosen by these scores). Decode the cells at 96 px, so that
# it takes seconds.
# ```
#
# ```{solution-start} ex-07-pretrained
# :class: dropdown
# ```

# %%
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from allkit.data import CellDataset, build_cache
from allkit.hybrid import HybridClassifier
from allkit.models import build_model

data = run.load().data  # the run's split
n_cells = {"train": 240, "val": 160, "test": 160}
frames = {part: ds.frame.sample(n=min(n_cells[part], len(ds)), random_state=0)
          for part, ds in data.datasets.items()}
cache = build_cache(pd.concat(frames.values(), ignore_index=True), size=96,
                    progress=False)
few = {part: CellDataset(cache, frame) for part, frame in frames.items()}
torch.manual_seed(0)
networks = {"random weights": build_model(card["backbone"], None),
            "ImageNet weights": build_model(card["backbone"], card["weights"])}
scores = {}
for name, network in networks.items():
    xgb = HybridClassifier(cnn=network, backbone=card["backbone"],
                           normalize=data.normalize,
                           n_estimators=run.config.xgb_estimators)
    xgb.fit(few["train"])
    scores[name] = {}
    for part in ("val", "test"):
        y, p_all = few[part].labels.numpy(), xgb.predict_proba(few[part])[:, 1]
        people = few[part].frame["subject"].nunique()
        scores[name][f"{part}: AUC ({people} people)"] = roc_auc_score(y, p_all)
        balanced = balanced_accuracy_score(y, p_all > 0.5)
        scores[name][f"{part}: balanced accuracy"] = balanced
display(pd.DataFrame(scores).T.round(3))

# %% [markdown]
# The same architecture, two sets of weights, the same XGBoost, nothing fine-tuned. Random weights are
# not worthless: colour, brightness and the size of the cell survive any random convolution, and on
# C-NMC those alone can separate the cells of a few people. ImageNet weights, never trained on a blood
# cell, give features made to tell shapes and textures apart, which fine-tuning (chapter 4) then adapts
# to HEM and ALL. Read the two parts separately: the validation part holds only the few people counted
# in its header, so its scores say how the two networks do on *those* people (a random network that
# tells them apart by colour can come out on top); the test part holds many more people, and a shortcut
# that worked on the validation people has to hold for all of them. Where the two parts disagree, trust
# the one with more people, and distrust any choice made on the other. With so few training cells and
# small images, neither may beat the other clearly. Whatever the numbers say here, the paper's Table 1
# compares ImageNet-pretrained networks, so a row trained from random weights would be a different
# experiment: that is why this chapter leaves a row empty rather than fill it so.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-07-size
# Does a larger network do better in the paper's Table 1? Put the paper's accuracy of each backbone
# next to its number of parameters and the length of the feature vector XGBoost receives, sorted by
# size.
# ```
#
# ```{solution-start} ex-07-size
# :class: dropdown
# ```

# %%
size = parameter_table(list(paper.TABLE_1))[["params_imagenet_head", "feature_dim"]]
size["paper (Table 1)"] = pd.Series(paper.TABLE_1)
size = size.sort_values("params_imagenet_head")
display(size)
rho = size["params_imagenet_head"].corr(size["paper (Table 1)"], method="spearman")
print(f"Rank correlation between size and the paper's accuracy: {rho:+.2f} "
      f"({len(size)} backbones).")

# %% [markdown]
# In the paper's Table 1 size and accuracy do not go together: the printout gives the rank correlation
# over the four networks. Architecture matters more than size: EfficientNet was designed to get the
# most ImageNet accuracy out of each parameter {cite:p}`tan2019efficientnet`, and a network with fewer
# parameters also overfits a few thousand training cells less easily. Four points, each one run of one
# study, cannot establish a trend, though; they only show that "bigger is better" does not hold here.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-07-overlap
# Two backbones, run on the same test cells, reach hybrid accuracies 0.02 apart, and their 95%
# intervals overlap widely. Can you conclude that they are equally good? What would you need to claim
# that one is better?
# ```
#
# ```{solution-start} ex-07-overlap
# :class: dropdown
# ```
#
# Neither conclusion follows. Overlapping intervals do not show that two models are equal, only that
# this test set cannot tell them apart. And because both models were scored on the *same* people, the
# two intervals are not independent: a person who is hard for one network is often hard for the other.
# The right tool is a **paired** comparison: resample the test people (as the subject bootstrap does),
# recompute the *difference* between the two accuracies in every resample, and look at the interval of
# that difference. Even then, one fine-tune per backbone mixes the architecture with the luck of one
# seed (initial head, order of the cells, augmentation): a claim that one backbone is better needs
# several seeds per backbone, the same data and recipe for all, and enough test people that the paired
# interval excludes zero.
#
# ```{solution-end}
# ```

# %% [markdown]
# # 7. Which backbone? The paper's Table 1
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/main/notebooks/07_backbones.ipynb)
#
# Before settling on EfficientNet-B0, the paper {cite:p}`somu2024advancing` compares it with other
# well-known CNNs in its Table 1. This chapter counts their parameters, then runs the whole method (same
# split, same recipe, same XGBoost) with every backbone whose ImageNet weights this machine can get, and
# says plainly which rows could not be computed here and why.

# %%
# Setup: on Colab this installs allkit and fetches C-NMC 2019 (kagglehub); elsewhere it only prints the run card.
try:
    import allkit  # noqa: F401
except ImportError:
    %pip install -q "allkit[download,offline] @ git+https://github.com/allkit/allkit"
from allkit.study.book import setup

ctx = setup("07_backbones")

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

# %%
# NBVAL_CHECK_OUTPUT
from allkit.study.backbones import parameter_table

sizes = parameter_table()
sizes[["params_imagenet_head", "params_2_classes", "paper_params", "input_size", "feature_dim", "note"]]

# %% [markdown]
# `params_imagenet_head` counts the network with its original 1000-class ImageNet head, which is how
# papers usually quote sizes; `params_2_classes` is the network this book trains (HEM/ALL head). The
# `paper_params` column is the paper's figure where it gives one; for VGG16 the paper only says "about
# 138 million". `feature_dim` is the length of the feature vector XGBoost receives: 1280 for the
# EfficientNets, 4096 for VGG16's last hidden layer. EfficientNet-B0 was designed to match the ImageNet
# accuracy of much larger networks with a fraction of their parameters {cite:p}`tan2019efficientnet`; a
# small network is also faster to fine-tune, which matters on Colab and even more on a CPU.
#
# ## Running the method with each backbone
#
# `compare_backbones` fine-tunes each backbone with this profile's recipe and split, fits XGBoost on its
# features and evaluates both on the same test cells. Results are cached per backbone in the run folder,
# so a second execution only reads them. Two details:
#
# - **Image size.** Every backbone gets the profile's image size, except in the `paper` profile, where
#   each gets its own native size (299 px for Inception-v3, 224 px for the others). Inception-v3 also
#   cannot be trained below 299 px at all (its auxiliary classifier needs it), so it gets 299 px in every
#   profile; the `note` column says so.
# - **Weights.** Each backbone needs its ImageNet weights from torchvision's servers. Where they cannot
#   be downloaded, the row says so and stays empty: no number is invented. The finished run of chapters
#   4 to 6 is reused for its own backbone instead of being trained twice.

# %%
import pandas as pd

from allkit.study.backbones import compare_backbones

run = ctx.run()
table = compare_backbones(ctx.profile, ctx.data_root, out=ctx.runs_dir / f"{ctx.profile.name}-backbones",
                          runs=[run])
table[["backbone", "status", "weights", "image_size", "cnn_accuracy", "hybrid_accuracy", "low", "high",
       "test_cells", "test_subjects", "seconds"]].round(3)

# %%
computed = table[table.status == "computed"]
missing = table[table.status != "computed"]
card = run.card
print(f"Data: {'SYNTHETIC stand-in' if card['synthetic'] else 'real C-NMC 2019 cells'}, {card['profile']} profile, "
      f"device {card['device']}.")
print(f"Computed here: {', '.join(computed.backbone) or 'none'}.")
if len(missing):
    print(f"Not computed here: {', '.join(missing.backbone)} ({missing.status.iloc[0]}). "
          "Run this notebook on Colab (or anywhere with internet) to fill those rows.")
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
    plots.plot_backbone_comparison(computed.drop(columns=["low", "high"]), metric="cnn_accuracy", ax=axes[0],
                                   title="CNN alone")
    plots.plot_backbone_comparison(computed, metric="hybrid_accuracy", ax=axes[1], title="Hybrid (+ XGBoost)")
    for ax in axes:
        ax.set_ylabel("Test accuracy")
    fig.suptitle(f"Test accuracy per backbone ({card['profile']} profile"
                 f"{', SYNTHETIC data' if card['synthetic'] else ''})");

# %% [markdown]
# One bar per backbone that could be run: the accuracy of the fine-tuned CNN on its own (left) and of the
# hybrid built on it (right), on the same test cells, with the 95% subject-bootstrap interval of the
# hybrid as error bars. Where only one backbone could be run, the figure is a single bar: the comparison
# itself needs the other rows.
#
# How much to read into differences between bars: the backbones share the test cells, so a difference is
# not pure noise, but the intervals are as wide as in chapter 5 for the same reason (a few test subjects),
# and one run per backbone with one seed says nothing about how much each result would move with another
# seed. In the small profiles the networks are also trained on a fraction of the data for a single epoch,
# which favours whichever backbone adapts fastest, not the one that ends best. A ranking of backbones
# needs the `paper` profile, several seeds, and a test set with many more people.
#
# For the paper's own Table 1 figures beyond the parameter counts quoted above, see the paper itself.
# Whatever it measured there, it measured on the full data set with its own protocol, so its figures are
# not directly comparable with rows computed here in a smaller profile.

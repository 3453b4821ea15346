# %% [markdown]
# # 6. Where does the CNN look? Grad-CAM
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/main/notebooks/06_gradcam.ipynb)
#
# The paper's FIG 5 {cite:p}`somu2024advancing` shows Grad-CAM heatmaps: for a cell image, which regions
# pushed the fine-tuned CNN towards a class. This chapter draws them for test cells of both classes, then
# for cells the CNN got wrong, measures how much of each map falls on the cell rather than on the black
# background, and ends with what such maps can and cannot tell us.
#
# **Learning goals.** After this chapter you can
# - compute Grad-CAM maps with `pytorch-grad-cam` for a chosen class and layer;
# - measure how much of a map falls on the cell instead of describing it by eye;
# - say what a heatmap shows (where the evidence for a class lies) and what it does not (why).

# %%
# Setup: on Colab this installs allkit and fetches C-NMC 2019 (kagglehub); elsewhere it only prints the run card.
try:
    import allkit  # noqa: F401
except ImportError:
    %pip install -q "allkit[download,offline] @ git+https://github.com/allkit/allkit"
from allkit.study.book import setup

ctx = setup("06_gradcam")

# %% [markdown]
# ## How Grad-CAM works
#
# Grad-CAM {cite:p}`selvaraju2017gradcam` looks at the last convolutional layer, whose output is a stack
# of coarse feature maps (1280 of them in EfficientNet). It asks: if this map were a little stronger, how
# much would the score of the chosen class rise? That derivative, averaged over the map, is the map's
# weight. The weighted sum of the maps, with negative values set to zero, is a small heatmap of the regions
# that speak *for* the class; it is stretched to the image size and laid over the image. The chosen class
# can be the true one, the predicted one, or any other.

# %%
import numpy as np
import pandas as pd
import torch

from allkit.constants import CLASS_NAMES
from allkit.explain import gradcam
from allkit.models import get_backbone
from allkit.study import plots
from allkit.study.book import show_source
from allkit.study.run import rebuild_prepared

run = ctx.run()
card = run.card
prepared = rebuild_prepared(run, progress=False)  # the run's test cells (same split, same seed)
test = prepared.datasets["test"]
normalize = run.hybrid.normalize  # the normalisation the CNN was trained with (saved with the model)
layer = run.model.get_submodule(get_backbone(card["backbone"]).gradcam_layer)
print(f"Model: the fine-tuned {card['backbone']} ({card['weights_note']})")
print(f"Data: {'SYNTHETIC stand-in' if card['synthetic'] else 'real C-NMC 2019 cells'}, {card['profile']} profile; "
      f"device {card['device']}")
side = card["image_size"] // 32  # the network shrinks the image 32-fold
print(f"Hooked layer: {type(layer).__name__}, the end of the convolutional part; at {card['image_size']} px its "
      f"maps are a {side}x{side} grid.")

# %% [markdown]
# ## The code
#
# `pytorch-grad-cam` does the work. `GradCAM(model, target_layers=[layer])` hooks the layer; each
# `ClassifierOutputTarget(c)` says which class's score to explain for one image (the true class, the
# predicted one, or any other); calling the `cam` returns one map per image. allkit's `gradcam` wraps
# exactly that, in batches, and keeps the model's own prediction next to each map:

# %%
show_source(gradcam)

# %% [markdown]
# ## Heatmaps for the true class (FIG 5)
#
# A few test cells of each class, each with the map for its **true** class: where the CNN found evidence
# for the right answer. The caption says whether the CNN's own prediction (its 2-class head) was right.

# %%
n = ctx.profile.n_gradcam
picks = test.frame.groupby("label").head(n).index.to_numpy()
images = torch.stack([test[i][0] for i in picks])
labels = test.frame.loc[picks, "label"].to_numpy()
cams = gradcam(run.model, card["backbone"], images, target="true", labels=labels, normalize=normalize)
where = f"{card['backbone']}, {card['profile']} profile{', SYNTHETIC data' if card['synthetic'] else ''}"
plots.plot_gradcam_result(cams, title=f"Grad-CAM, true class ({where})");

# %% [markdown]
# Left, the cell as the network sees it (cropped and resized); right, the heatmap over it, from blue (no
# evidence) to red (strongest evidence). The frame is green when the CNN's prediction was right and
# orange when it was wrong. Each map is stretched to its own maximum, so every non-empty map has some
# red, even for a class the CNN finds unlikely: colours compare regions *within* one map, not one map
# with another (the table below gives each cell's predicted probability of ALL). What to look for: does the red sit on the cell, on its nucleus, on its edge,
# or on the black background around it? A map on the background would be a warning sign: there is
# nothing to learn about leukaemia there, so the network would be using a shortcut (for example the
# cell's size or position in the frame).
#
# The eye is easily fooled by colour maps, so the next cell measures it: the share of each map's total
# heat that lies on the cell (the non-black pixels), next to the share of the image the cell covers, which
# is what a map spread evenly over the image would give.

# %%
def heat_on_cell(result) -> pd.DataFrame:
    cell = result.images.max(axis=-1) > 10  # C-NMC cells sit on a pure black background
    heat = result.heatmaps
    total = heat.sum(axis=(1, 2))
    return pd.DataFrame({
        "true": [CLASS_NAMES[v] for v in result.labels],
        "predicted": [CLASS_NAMES[v] for v in result.predictions],
        "P(ALL)": result.probabilities[:, 1],
        "cell area (share of image)": cell.mean(axis=(1, 2)),
        "heat on the cell": np.where(total > 0, (heat * cell).sum(axis=(1, 2)) / np.maximum(total, 1e-12), np.nan),
    })


on_cell = heat_on_cell(cams)
display(on_cell.round(3))
empty = on_cell["heat on the cell"].isna()
if empty.any():
    print(f"{empty.sum()} of {len(on_cell)} maps are empty: nothing in those images raised the class's score.")
for name, group in on_cell[~empty].groupby("true"):
    print(f"True {name} cells: on average {group['heat on the cell'].mean():.0%} of the heat lies on the cell, "
          f"which covers {group['cell area (share of image)'].mean():.0%} of the image.")
every_cell = torch.stack([test[i][0] for i in range(len(test))])
area = (every_cell.amax(dim=1) > 10).float().mean(dim=(1, 2)).numpy()
for k, name in enumerate(CLASS_NAMES):
    print(f"Over all {len(test)} test cells, {name} cells cover {area[test.frame.label == k].mean():.0%} of "
          "the image on average.")

# %% [markdown]
# An **empty** map (uniformly dark blue in the figure, no number in the table) is an answer too: the CNN
# found no evidence at all for that class in the image, which is typical when it is confident of the other
# class. Among the other maps, a heat share well above the cell's area means the map concentrates on the
# cell. Because the maps are so coarse, some heat always spills onto the background next to the cell edge; a
# share near the area means the map is no more about the cell than about anything else, and a share near
# zero means the evidence came from the black background alone, which cannot be a reason a pathologist would
# accept.
#
# Note also the last lines: where the two classes differ in how much of the image the cell covers, size
# alone carries part of the answer, and a map that covers the whole cell is consistent with the network
# using size and outline as well as what is inside the cell. Grad-CAM cannot tell these apart.
#
# ## What does it see when it is wrong?
#
# The maps above explain correct and incorrect calls alike for the *true* class. For the cells the CNN
# misclassified, the more telling question is what made it choose the **wrong** class, so these maps
# are computed for the *predicted* class.

# %%
from allkit.inference import predict_proba

proba = predict_proba(run.model, test, normalize=normalize)
wrong = test.frame[proba.argmax(axis=1) != test.frame["label"].to_numpy()]
print(f"The CNN alone misclassifies {len(wrong)} of {len(test)} test cells: "
      + ", ".join(f"{(wrong.label == k).sum()} {name}" for k, name in enumerate(CLASS_NAMES)) + ".")
if len(wrong):
    picks = wrong.groupby("label").head(n).index.to_numpy()
    images = torch.stack([test[i][0] for i in picks])
    labels = test.frame.loc[picks, "label"].to_numpy()
    mistakes = gradcam(run.model, card["backbone"], images, target="predicted", labels=labels,
                       normalize=normalize)
    plots.plot_gradcam_result(mistakes, title=f"Grad-CAM, predicted (wrong) class ({where})")
    display(heat_on_cell(mistakes).round(3))

# %% [markdown]
# Each row is a misclassified cell (orange frame) with the map of the class the CNN chose. If the
# evidence for the wrong class sits on the cell itself, much as the evidence for correct calls did above,
# the network is not looking in the wrong place: it reads the cell differently, and the cell may simply
# be hard (or, now and then, mislabelled). Evidence on the background would instead point to a shortcut.
# These are the CNN's errors; the hybrid decides with XGBoost on the same features, and Grad-CAM cannot
# explain XGBoost's trees.
#
# ## What the maps do and do not show
#
# - They show **where** in the last convolutional layer's coarse grid the evidence for one class came
#   from, for one image. They do not show **what** the network saw there (colour, texture, shape or size
#   all look the same on a heatmap), nor whether a pathologist would agree with the reason.
# - They are coarse: each square of the grid stands for a 32×32-pixel patch of the input (and draws on an
#   even larger neighbourhood), so fine structures such as nucleoli cannot be pointed at.
# - They explain one model on a few chosen images. A handful of nice-looking maps is not evidence that
#   the model is right for the right reasons; the heat-on-cell share above, over many cells, is a first
#   step from pictures to a measurement.
# - The method has known failure modes: maps can look similar for different classes, and they depend on
#   which layer is hooked. The paper's FIG 5 should be read with the same caution.

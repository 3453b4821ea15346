# %% [markdown]
# # 6. Where does the CNN look? Grad-CAM
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/06_gradcam.ipynb)
#
# The paper's FIG 5 {cite:p}`somu2024advancing` shows Grad-CAM heatmaps: for a cell image, which regions
# pushed the fine-tuned CNN towards a class. The paper reads them as showing that the model focuses on
# the cell itself and not on the outer regions of the image. This chapter shows the code, draws the
# maps for test cells of both classes (our FIG 5), then for cells the CNN got wrong, measures how much
# of each map falls on the cell rather than on the black background, and ends with what such maps can
# and cannot tell us.
#
# **Learning goals.** After this chapter you can
# - compute Grad-CAM maps with `pytorch-grad-cam` for a chosen class and layer (the paper's FIG 5);
# - measure how much of a map falls on the cell instead of describing it by eye;
# - say what a heatmap shows (where the evidence for a class lies) and what it does not (why).

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

ctx = setup("06_gradcam", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

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
from allkit.study import paper, plots

run = ctx.run(progress=False)
card = run.card
data = run.load().data  # the run's split (from its seed) and its fine-tuned CNN
test = data.datasets["test"]
normalize = data.normalize  # as the CNN was trained
layer_name = get_backbone(card["backbone"]).gradcam_layer
layer = run.model.get_submodule(layer_name)
kind = "SYNTHETIC stand-in" if card["synthetic"] else "real C-NMC 2019 cells"
note = card["weights_note"].split(" (")[0]
print(f"Model: the fine-tuned {card['backbone']} ({note})")
print(f"Data: {kind}, {card['profile']} profile; device {card['device']}")
side = card["image_size"] // 32  # the network shrinks the image 32-fold
print(f"Hooked layer: {layer_name!r} ({type(layer).__name__}), the end of the "
      f"convolutional part; at {card['image_size']} px its maps are a {side}x{side} "
      "grid.")

# %% [markdown]
# The paper says its maps are "generated from the 7th feature layer of EfficientNetB0", without naming
# the module. In torchvision's EfficientNet-B0 the convolutional part is `features`, a list of nine
# stages, so the seventh is `features[6]` counting from one, or `features[7]` counting from zero. This
# book hooks `features[8]`, the last one (a 1×1 convolution to the 1280 maps that the pooling then
# averages into the features XGBoost sees), the usual choice for Grad-CAM; for EfficientNet-Lite0, its
# counterpart `_head_act`. At 224 px all of these layers are 7×7 grids, so the choice changes which
# features are weighed more than how sharp the map is. {ref}`ex-06-layer` hooks another layer.
#
# ## The code
#
# `pytorch-grad-cam` does the work, in three lines: `GradCAM(model, target_layers=[layer])` hooks the
# layer; each `ClassifierOutputTarget(c)` says which class's score to explain for one image (the true
# class, the predicted one, or any other); calling the `cam` on the network's input returns one map per
# image. Here for the first four test cells, each for the class ALL:

# %%
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from allkit.transforms import to_model_input

first = torch.stack([test[i][0] for i in range(4)])  # uint8 cells, as cached
x = to_model_input(first, normalize)  # the network's input, normalised as in training
with GradCAM(model=run.model.eval(), target_layers=[layer]) as cam:
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * len(x))
print(f"{maps.shape} (cells, height, width): one map per cell, values from "
      f"{maps.min():.2f} to {maps.max():.2f}")

# %% [markdown]
# allkit's `gradcam` wraps exactly that, in batches, for a target given per cell ("true", "predicted", a
# class), and keeps the model's own prediction next to each map. The same four cells through it give the
# same maps:

# %%
same = gradcam(run.model, card["backbone"], first, target=1, normalize=normalize)
assert np.allclose(same.heatmaps, maps, atol=1e-5), "the two sets of maps differ"
print("the same maps:", np.allclose(same.heatmaps, maps, atol=1e-5))

# %% [markdown]
# ## Heatmaps for the true class (the paper's FIG 5)
#
# A few test cells of each class, each with the map for its **true** class: where the CNN found evidence
# for the right answer (the paper's FIG 5 shows two cells of each class). The caption says whether the
# CNN's own prediction (its 2-class head) was right.

# %%
n = ctx.config.n_gradcam
picks = test.frame.groupby("label").head(n).index.to_numpy()
images = torch.stack([test[i][0] for i in picks])
labels = test.frame.loc[picks, "label"].to_numpy()
cams = gradcam(run.model, card["backbone"], images, target="true", labels=labels,
               normalize=normalize)
where = f"{card['backbone']}, {card['profile']} profile"
where += ", SYNTHETIC data" if card["synthetic"] else ""
print(f"The paper's FIG 5: {paper.FIGURES[5]}. Ours, for this run:")
plots.plot_gradcam_result(cams, title=f"FIG 5: Grad-CAM, true class ({where})");

# %% [markdown]
# Left, the cell as the network sees it (cropped and resized); right, the heatmap over it, from blue (no
# evidence) to red (strongest evidence). The frame is green when the CNN's prediction was right and
# orange when it was wrong. Each map is stretched to its own maximum, so every non-empty map has some
# red, even for a class the CNN finds unlikely: colours compare regions *within* one map, not one map
# with another (the table below gives each cell's predicted probability of ALL). What to look for: does
# the red sit on the cell, on its nucleus, on its edge, or on the black background around it? A map on
# the background would be a warning sign: there is nothing to learn about leukaemia there, so the
# network would be using a shortcut (for example the cell's size or position in the frame).
#
# The eye is easily fooled by colour maps, so the next cell measures it: the share of each map's total
# heat that lies on the cell (the non-black pixels), next to the share of the image the cell covers, which
# is what a map spread evenly over the image would give.

# %%
def heat_on_cell(result) -> pd.DataFrame:
    cell = result.images.max(axis=-1) > 10  # C-NMC cells sit on a pure black background
    heat = result.heatmaps
    total = heat.sum(axis=(1, 2))
    share = (heat * cell).sum(axis=(1, 2)) / np.maximum(total, 1e-12)
    return pd.DataFrame({
        "true": [CLASS_NAMES[v] for v in result.labels],
        "predicted": [CLASS_NAMES[v] for v in result.predictions],
        "P(ALL)": result.probabilities[:, 1],
        "cell area (share of image)": cell.mean(axis=(1, 2)),
        "heat on the cell": np.where(total > 0, share, np.nan),
    })


on_cell = heat_on_cell(cams)
display(on_cell.round(3))
empty = on_cell["heat on the cell"].isna()
if empty.any():
    print(f"{empty.sum()} of {len(on_cell)} maps are empty: nothing in those images "
          "raised the class's score.")
for name, group in on_cell[~empty].groupby("true"):
    heat, area = group["heat on the cell"], group["cell area (share of image)"]
    print(f"True {name} cells: on average {heat.mean():.0%} of the heat lies on the "
          f"cell, which covers {area.mean():.0%} of the image.")
every_cell = torch.stack([test[i][0] for i in range(len(test))])
area = (every_cell.amax(dim=1) > 10).float().mean(dim=(1, 2)).numpy()
for k, name in enumerate(CLASS_NAMES):
    print(f"Over all {len(test)} test cells, {name} cells cover "
          f"{area[test.frame.label == k].mean():.0%} of the image on average.")

# %% [markdown]
# An **empty** map (uniformly dark blue in the figure, no number in the table) is an answer too: the CNN
# found no evidence at all for that class in the image, which is typical when it is confident of the other
# class. Among the other maps, a heat share well above the cell's area means the map concentrates on the
# cell. Because the maps are so coarse, some heat always spills onto the background next to the cell
# edge; a share near the area means the map is no more about the cell than about anything else, and a
# share near zero means the evidence came from the black background alone, which cannot be a reason a
# pathologist would accept. This is the paper's reading of its FIG 5 ("focusing on the cell itself"),
# turned into a number that can be checked on many cells.
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
per_class = [f"{(wrong.label == k).sum()} {name}" for k, name in enumerate(CLASS_NAMES)]
print(f"The CNN alone misclassifies {len(wrong)} of {len(test)} test cells: "
      f"{', '.join(per_class)}.")
if len(wrong):
    picks = wrong.groupby("label").head(n).index.to_numpy()
    wrong_images = torch.stack([test[i][0] for i in picks])
    wrong_labels = test.frame.loc[picks, "label"].to_numpy()
    mistakes = gradcam(run.model, card["backbone"], wrong_images, target="predicted",
                       labels=wrong_labels, normalize=normalize)
    plots.plot_gradcam_result(mistakes,
                              title=f"Grad-CAM, predicted (wrong) class ({where})")
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
# - They cannot show colour. Chapter 12 asks whether the few healthy donors of the training part differ
#   from the patients in their cells' colour, a shortcut ("darker means healthy") that would not hold
#   for new people. A network that used it would still put its heat on the cell, where the colour is,
#   and the map would look just as reassuring.
#
# ## Summary
#
# - Grad-CAM weights each map of the last convolutional layer by the gradient of a chosen class's score,
#   keeps the positive part of the weighted sum, and stretches it over the image.
# - `pytorch-grad-cam` computes the maps in three lines, and allkit's `gradcam` wraps it for the true,
#   the predicted or any class per cell. The book hooks the end of the convolutional part; the paper
#   names only a "7th feature layer".
# - Instead of judging the maps by eye, the chapter measures the share of each map's heat that lies on
#   the cell, beside the share of the image the cell covers; misclassified cells get the map of the class
#   the CNN chose.
# - A map shows where, on a coarse grid, the evidence for one class lies in one image: not what was seen
#   there (colour, texture, shape and size look alike on it), nor whether the reason is sound, and it
#   changes with the layer hooked.
#
# Next, {doc}`07_backbones` swaps EfficientNet-B0 for other CNNs, as the paper's Table 1 does.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-06-other-class
# Compute the maps of the same cells for the **other** class (HEM for an ALL cell, ALL for a HEM cell):
# where in each cell does the evidence *against* its true class lie? Compare the heat on the cell with
# the maps for the true class above, and count the empty maps.
# ```
#
# ```{solution-start} ex-06-other-class
# :class: dropdown
# ```

# %%
images = torch.from_numpy(cams.images).permute(0, 3, 1, 2)  # FIG 5's cells [B, 3, H, W]
labels = np.array(cams.labels)
other = gradcam(run.model, card["backbone"], images,
                target=[1 - int(v) for v in labels], labels=labels, normalize=normalize)
plots.plot_gradcam_result(other, title=f"Grad-CAM, the other class ({where})")
compare = pd.DataFrame({
    "true": on_cell["true"], "P(ALL)": on_cell["P(ALL)"],
    "heat on cell, true class": on_cell["heat on the cell"],
    "heat on cell, other class": heat_on_cell(other)["heat on the cell"],
})
display(compare.round(3))
print(f"Empty maps: {compare.iloc[:, 2].isna().sum()} for the true class, "
      f"{compare.iloc[:, 3].isna().sum()} for the other class, of {len(compare)} each.")

# %% [markdown]
# With two classes, the scores of the head push in opposite directions, so the map of the other class
# often lights up where the map of the true class is dark, or is empty where the CNN is confident
# (nothing in the image raises the score of a class it rejects). Where both maps sit on the same part
# of the cell, that part holds evidence for both answers and the map alone cannot say which wins; the
# predicted probability in the table decides. That is one of the limits listed above: a heatmap shows
# *where*, never *how much* one region outweighs another.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-06-layer
# Hook a layer one stage earlier, whose maps are twice as fine (`features.5` in EfficientNet-B0,
# `_blocks.10` in Lite0), with `pytorch-grad-cam` directly: `GradCAM(model, target_layers=[layer])` and
# one `ClassifierOutputTarget` per image, as `gradcam` does inside. How do the maps and the heat on the
# cell change?
# ```
#
# ```{solution-start} ex-06-layer
# :class: dropdown
# ```

# %%
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from allkit.explain import GradCamResult
from allkit.transforms import to_model_input

earlier = {"efficientnet_b0": "features.5",  # one stage before the hooked layer
           "efficientnet_lite0": "_blocks.10"}[card["backbone"]]
device = next(run.model.parameters()).device
x = to_model_input(images.to(device), normalize)
grid = {}


def remember_grid(module, args, out) -> None:  # a hook returning None changes nothing
    grid["shape"] = tuple(out.shape[-2:])


hook = run.model.get_submodule(earlier).register_forward_hook(remember_grid)
with GradCAM(model=run.model, target_layers=[run.model.get_submodule(earlier)]) as cam:
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in labels])
hook.remove()
run.model.zero_grad(set_to_none=True)
finer = GradCamResult(maps, cams.images, cams.targets, cams.predictions,
                      cams.probabilities, cams.labels)
plots.plot_gradcam_result(finer, title=f"Grad-CAM at {earlier!r}, true class ({where})")
height, width = grid["shape"]
print(f"Maps on a grid of {height}x{width} at {earlier!r}, against {side}x{side} at "
      f"{layer_name!r}.")
display(pd.DataFrame({
    "true": on_cell["true"],
    f"heat on cell at {layer_name}": on_cell["heat on the cell"],
    f"heat on cell at {earlier}": heat_on_cell(finer)["heat on the cell"],
}).round(3))

# %% [markdown]
# The earlier layer's maps are finer, so they can follow the outline of the cell more closely and spill
# less onto the background; but its features are also less about the classes (they were computed before
# the last stages of the network turned them into evidence for HEM or ALL), so its maps tend to be
# noisier and to mark edges and texture rather than the decision. Neither layer is *the* explanation:
# the maps depend on where one looks, which is why the paper's "7th feature layer" matters for reading
# its FIG 5, and why a claim about what a network attends to should say which layer it hooked.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-06-untrained
# A sanity check for any explanation method: the same maps for a network that has learnt nothing. Build
# the run's backbone with random weights (`build_model(backbone, None)`), compute its Grad-CAM maps of
# the same cells, and compare the heat on the cell with the fine-tuned network's. What does the result
# say about the sentence "the model focuses on the cell itself"?
# ```
#
# ```{solution-start} ex-06-untrained
# :class: dropdown
# ```

# %%
from allkit.models import build_model

torch.manual_seed(0)
untrained = build_model(card["backbone"], None).eval()  # random weights: learnt nothing
blind = gradcam(untrained, card["backbone"], images, target="true", labels=labels,
                normalize=normalize)
plots.plot_gradcam_result(blind, title=f"Grad-CAM of an untrained {card['backbone']}")
display(pd.DataFrame({
    "true": on_cell["true"],
    "cell area": on_cell["cell area (share of image)"],
    "heat on cell, fine-tuned": on_cell["heat on the cell"],
    "heat on cell, untrained": heat_on_cell(blind)["heat on the cell"],
}).round(3))

# %% [markdown]
# On C-NMC images everything but the cell is pure black, so any network, even one with random weights,
# has nearly constant activations on the background and varying ones on the cell: part of "the heat is
# on the cell" can come from the images alone. The untrained network measures that part. Compare the
# last two columns with each other and with the cell's area: where the fine-tuned network puts clearly
# more of its heat on the cell than the untrained one, training taught it to look there; where the two
# are alike, a map "on the cell" is a property of these images, not evidence of what the network
# learnt. Four cells are too few to decide; run it on more cells (and on the paper profile's model)
# before drawing a conclusion either way.
#
# ```{solution-end}
# ```

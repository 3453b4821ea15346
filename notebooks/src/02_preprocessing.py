# %% [markdown]
# # 2. Preprocessing and augmentation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/main/notebooks/02_preprocessing.ipynb)
#
# This notebook follows the paper's preprocessing and augmentation: a centre crop, a
# resize to 224 pixels, random flips and rotations, and conversion to a tensor. We push one real cell
# through every step and look at it after each one, then see what the paper leaves out (normalisation)
# and how allkit runs the same pipeline fast enough for a CPU or a Colab GPU.

# %%
# Setup: on Colab this installs allkit and fetches C-NMC 2019 (kagglehub); elsewhere it only prints the run card.
try:
    import allkit  # noqa: F401
except ImportError:
    %pip install -q "allkit[download,offline] @ git+https://github.com/allkit/allkit"
from allkit.study.book import setup

ctx = setup("02_preprocessing")

# %% [markdown]
# ## The paper's pipeline
#
# The paper lists its transforms in torchvision terms. allkit writes them down once, in
# `allkit.transforms`, and can describe them in words. First the pipeline exactly as the paper gives it,
# then allkit's default, which adds one step:

# %%
# NBVAL_CHECK_OUTPUT
from allkit.study.book import describe_pipeline

print("The paper's training pipeline:")
for i, step in enumerate(describe_pipeline(normalize=False), start=1):
    print(f"  {i}. {step}")
print("\nallkit's default adds:")
print(f"  {len(describe_pipeline(normalize=True))}. {describe_pipeline(normalize=True)[-1]}")
print("\nFor evaluation the random steps are left out:")
for i, step in enumerate(describe_pipeline(normalize=False, train=False), start=1):
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

from allkit.constants import CROP_SIZE, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, ROTATION_DEGREES

frame = ctx.cells.frame

def asymmetry(path):  # how much the cell's outline changes under a horizontal and a vertical flip
    mask = np.asarray(Image.open(path).convert("L")) > 10
    return (mask != mask[:, ::-1]).mean() + (mask != mask[::-1, :]).mean()

all_cells = frame[frame.label == 1]
candidates = all_cells.sample(min(40, len(all_cells)), random_state=ctx.profile.seed)
cell = candidates.loc[max(candidates.index, key=lambda i: asymmetry(candidates.path[i]))]
original = Image.open(cell.path).convert("RGB")
print(f"{Path(cell.path).name}: subject {cell.subject}, {cell.class_name}, "
      f"{original.size[0]}×{original.size[1]} pixels, mode {original.mode}")

cropped = F.center_crop(original, [CROP_SIZE, CROP_SIZE])
resized = F.resize(cropped, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
h_flipped = F.horizontal_flip(resized)
v_flipped = F.vertical_flip(h_flipped)
rotated = F.rotate(v_flipped, ROTATION_DEGREES, interpolation=v2.InterpolationMode.NEAREST, fill=0)
tensor = F.to_dtype(F.to_image(rotated), torch.float32, scale=True)        # ToTensor: [0, 1]
normalised = F.normalize(tensor, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))

def describe(x):
    if isinstance(x, Image.Image):
        return f"{x.size[0]}×{x.size[1]}, uint8 0–255"
    return f"{tuple(x.shape)}, float {x.min():.2f} to {x.max():.2f}"

def stretch(x):  # per-channel min-max, only to make a normalised tensor viewable
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    return ((x - lo) / (hi - lo)).permute(1, 2, 0).numpy()

stages = [
    ("1. original", original), (f"2. CenterCrop({CROP_SIZE})", cropped), (f"3. Resize({IMAGE_SIZE})", resized),
    ("4. horizontal flip", h_flipped), ("5. vertical flip", v_flipped),
    (f"6. rotate +{ROTATION_DEGREES:g}°", rotated), ("7. ToTensor", tensor), ("8. Normalize (ImageNet)", normalised),
]
fig, axes = plt.subplots(2, 4, figsize=(12, 6.6), layout="constrained")
for ax, (name, img) in zip(axes.ravel(), stages):
    shown = stretch(img) if img is normalised else (img.permute(1, 2, 0).numpy() if torch.is_tensor(img) else img)
    ax.imshow(shown)
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
via_cache = to_model_input(torch.from_numpy(decode_cell(original)).permute(2, 0, 1), normalize=False)
print(f"eval_transform equals the steps by hand: {torch.equal(via_eval, by_hand)}")
print(f"decode_cell + to_model_input equals them too: {torch.equal(via_cache, by_hand)}")

# %% [markdown]
# ## Normalisation: what the paper skips
#
# EfficientNet-B0's ImageNet weights {cite}`tan2019efficientnet,deng2009imagenet` were learned on
# photographs normalised per channel,
#
# $$
# x'_c = \frac{x_c - \mu_c}{\sigma_c}, \qquad \mu = (0.485,\ 0.456,\ 0.406), \quad \sigma = (0.229,\ 0.224,\ 0.225),
# $$
#
# so the first convolution and the batch-norm statistics after it were tuned to inputs centred near zero
# with unit spread. Fed raw [0, 1] values instead, every early activation is shifted and scaled, and
# fine-tuning first has to undo that mismatch before it can use what the pretrained filters know. The
# paper's pipeline, as it describes it, ends at `ToTensor`. That is a real difference, not a detail:
# fine-tuning can partly adapt (batch norm re-estimates its statistics while training), but it spends
# part of its five epochs doing so.
#
# allkit's profiles handle this as follows (the profile is chosen with `ALLKIT_PROFILE`):

# %%
from allkit.models import get_backbone
from allkit.study.profiles import PROFILES


def rounded(values):
    return tuple(round(v, 3) for v in values)


for profile in PROFILES.values():
    if not profile.normalize:
        how = "no normalisation: [0, 1] input, as the paper's pipeline"
    else:
        mean, std = get_backbone(profile.backbone).mean_std
        how = f"the backbone's own statistics ({profile.backbone}: mean {rounded(mean)}, std {rounded(std)})"
        if profile.fallback_backbone:
            mean, std = get_backbone(profile.fallback_backbone).mean_std
            how += f"; offline fallback {profile.fallback_backbone}: mean {rounded(mean)}, std {rounded(std)}"
    marker = "  <- this run" if profile.name == ctx.profile.name else ""
    print(f"{profile.name:>6}: {how}{marker}")

# %% [markdown]
# The `paper` profile reproduces the paper, so it does not normalise. The `sample` and `ci` profiles
# normalise with whatever the backbone was trained on: ImageNet's mean and standard deviation for
# torchvision's EfficientNet-B0, and (x·255 − 127)/128 for the EfficientNet-Lite0 that stands in for it
# when B0's weights cannot be downloaded (notebook 3 explains Lite0).
#
# What does normalisation do to the pixel values of our cell? Histograms of the three channels, before
# (step 7) and after (step 8):

# %%
x01 = by_hand                                   # [3, 224, 224] in [0, 1], no augmentation
xn = F.normalize(x01, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
colors = ("tab:red", "tab:green", "tab:blue")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for ax, values, title in ((axes[0], x01, "after ToTensor: [0, 1]"), (axes[1], xn, "after ImageNet Normalize")):
    for c, (name, color) in enumerate(zip("RGB", colors)):
        ax.hist(values[c].ravel().numpy(), bins=80, histtype="step", color=color, label=name, log=True)
    ax.set_xlabel("Pixel value")
    ax.set_ylabel("Number of pixels (log scale)")
    ax.set_title(title)
    ax.legend(title="channel")
fig.suptitle("Pixel values of one cell");

background = (x01.max(dim=0).values < 0.02).float().mean().item()
print(f"near-black background: {background:.0%} of the pixels")
for c, name in enumerate("RGB"):
    print(f"{name}: black maps to {(0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]:+.2f} after normalisation; "
          f"cell pixels mean {x01[c][x01.max(dim=0).values >= 0.02].mean():.2f} -> "
          f"{xn[c][x01.max(dim=0).values >= 0.02].mean():+.2f}")

# %% [markdown]
# Left: in [0, 1], each channel has a tall spike at 0 (the black background, most of the image) and a
# low hump for the cell itself, which is dark. Right: normalisation shifts and rescales each channel
# differently, so the background spike moves to a different negative value per channel (printed above)
# and the cell's values follow. Normalising does *not* make a C-NMC cell look like an ImageNet photograph
# (its mean is nowhere near ImageNet's): it only puts the numbers on the scale the pretrained first layer
# was trained with. Compare the statistics of a few dozen cells with ImageNet's:

# %%
sample = frame.sample(min(64, len(frame)), random_state=ctx.profile.seed)
batch = torch.stack([to_model_input(torch.from_numpy(decode_cell(p)).permute(2, 0, 1), normalize=False)
                     for p in sample.path])
mean, std = batch.mean(dim=(0, 2, 3)), batch.std(dim=(0, 2, 3))
print(f"{len(sample)} cells | channel: C-NMC mean / std   vs   ImageNet mean / std")
for c, name in enumerate("RGB"):
    print(f"      {name}: {mean[c]:.3f} / {std[c]:.3f}   vs   {IMAGENET_MEAN[c]:.3f} / {IMAGENET_STD[c]:.3f}")

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

uint8_cell = torch.from_numpy(decode_cell(original)).permute(2, 0, 1)   # [3, 224, 224] uint8
eight = uint8_cell.unsqueeze(0).repeat(8, 1, 1, 1)
augment = BatchAugment()
generator = torch.Generator().manual_seed(ctx.profile.seed)
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
fig.suptitle(f"BatchAugment (flips p = {augment.p_hflip:g}, rotation ±{augment.degrees:g}°): 8 draws for one cell");

unflipped = (1 - FLIP_PROBABILITY) ** 2
print(f"{int(hflip.sum())} of 8 flipped horizontally, {int(vflip.sum())} vertically; "
      f"angles from {angle.min():+.1f}° to {angle.max():+.1f}°")
print(f"with p = {FLIP_PROBABILITY} per flip, {unflipped:.0%} of augmented images are not flipped at all")

# %% [markdown]
# Each panel is the same cell with one random draw; the caption says which flips were applied and by how
# many degrees it was rotated. Most copies are not flipped (with two independent flips of probability
# 0.2, the printed share of images get neither), and the rotations are small. The paper's augmentation
# is mild: it adds variety in orientation only, not in colour, scale or sharpness, which is where
# subjects differ most (notebook 1).
#
# ## Decode once, augment on the device
#
# Steps 1–3 (decode the file, crop, resize) give the same result every epoch, so allkit does them
# **once per cell** and stores the result as a uint8 array of shape (cells, 224, 224, 3) in a
# memory-mapped `.npy` file, the *cache*. Only the random part (flips and rotation) and the conversion
# to floats run during training, on whole batches, on whatever device trains the model:

# %%
from allkit.data import CellDataset, build_cache, make_loader

small = frame.sample(min(80, len(frame)), random_state=ctx.profile.seed)
cache = build_cache(small, progress=False)
images, labels = next(iter(make_loader(CellDataset(cache), batch_size=40, shuffle=True)))
x = to_model_input(augment(images, generator=generator), normalize=True)

print(f"cache: {cache.images.dtype} array of shape {cache.images.shape}, "
      f"{cache.images.nbytes / 2**20:.1f} MiB for {len(cache)} cells")
full = 10_661 * IMAGE_SIZE * IMAGE_SIZE * 3
print(f"the full training set (10,661 cells) at {IMAGE_SIZE} px: {full / 2**30:.2f} GiB on disk, memory-mapped")
print(f"one batch from the loader: {images.dtype} {tuple(images.shape)}, labels {labels.tolist()[:8]}...")
print(f"after BatchAugment + to_model_input: {x.dtype} {tuple(x.shape)}, values {x.min():.2f} to {x.max():.2f}")

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

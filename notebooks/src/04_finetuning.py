# %% [markdown]
# # 4. Fine-tuning the CNN
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/v0.1.0/notebooks/04_finetuning.ipynb)
#
# The paper {cite:p}`somu2024advancing` fine-tunes an ImageNet-pretrained EfficientNet-B0
# {cite:p}`tan2019efficientnet` on the C-NMC 2019 cells, and its FIG 6 shows the training curves. This
# chapter shows the code that does it, runs it with the book's profile, draws the curves (our FIG 6),
# and reads them: how fast the model learns, whether it generalises to people it has never seen, and
# how long the training takes here.
#
# **Learning goals.** After this chapter you can
# - replace the 1000-class ImageNet head of a pretrained CNN by a new 2-class head, and say which weights
#   are new and which are pretrained;
# - read a PyTorch fine-tuning loop line by line: augmentation, forward pass, cross-entropy, `backward()`,
#   `step()`, and a validation pass after every epoch;
# - read training curves (the paper's FIG 6), and tell a model that learns *cells* from one that learns
#   the *people* it saw.

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

ctx = setup("04_finetuning", PROFILE, download=DATA == "Kaggle",
            runs_on_drive=KEEP_RUNS_ON_GOOGLE_DRIVE)

# %% [markdown]
# ## The recipe
#
# The paper's recipe is short: start from ImageNet weights {cite:p}`deng2009imagenet`, replace the
# 1000-class head by a 2-class one (HEM = 0, ALL = 1), and train for **5 epochs** with the **Adamax**
# optimiser at a learning rate of **10⁻³**, **40 images per batch**, minimising the **cross-entropy**
# between the predicted class probabilities and the true labels. This book updates every layer of the
# network, not only the new head. The training images are randomly flipped and slightly rotated (see the
# preprocessing chapter); validation images are not.
#
# A *profile* (named in the run card above) decides how much of that a machine can afford. The table
# below puts the paper's numbers next to what this book's profile actually uses, so that nothing is
# changed silently. (Where the backbone's ImageNet weights cannot be downloaded, the run falls back to
# another backbone; the run itself, further down, says which one it trained.)

# %%
import pandas as pd

from allkit import constants

config = ctx.config
recipe = pd.DataFrame(
    {
        "paper": ["efficientnet_b0", "ImageNet", constants.EPOCHS, constants.BATCH_SIZE,
                  constants.LEARNING_RATE, "Adamax", constants.IMAGE_SIZE,
                  "none ([0, 1])", "all"],
        f"this book ({config.name} profile)": [
            config.backbone, config.weights, config.epochs, config.batch_size,
            config.lr, config.optimizer.capitalize(), config.image_size,
            "the backbone's mean/std" if config.normalize else "none ([0, 1])",
            config.max_train_cells or "all"],
    },
    index=["backbone", "pretrained weights", "epochs", "batch size", "learning rate",
           "optimiser", "image size (px)", "normalisation", "training cells"],
)
recipe

# %% [markdown]
# ## A new head on a pretrained network
#
# An ImageNet network ends in a linear layer with 1000 outputs, one per ImageNet class. For C-NMC we
# need two (HEM = 0, ALL = 1), so `build_model` loads the pretrained weights and then swaps that last
# layer for a new, randomly initialised `Linear(1280, 2)`. Everything before it keeps its ImageNet
# weights; the fine-tune then adjusts *all* layers, the new head fastest (it starts from nothing).
# Here both versions of the architecture side by side (random weights, nothing is downloaded):

# %%
from allkit.models import build_model, get_backbone, head

backbone = get_backbone(config.backbone)
imagenet_head = head(build_model(backbone.name, weights=None, num_classes=1000),
                     backbone)
our_head = head(build_model(backbone.name, weights=None), backbone)
print(f"{backbone.name}: the layer at {backbone.head!r}")
print(f"  as trained on ImageNet: {imagenet_head}")
print(f"  for C-NMC:              {our_head}  <- new, randomly initialised")
new = sum(p.numel() for p in our_head.parameters())
rest = backbone.num_params - sum(p.numel() for p in imagenet_head.parameters())
print(f"The new head has {new:,} parameters; the rest of the network about {rest:,}.")

# %% [markdown]
# ## Training (or reusing the finished run)
#
# `ctx.run()` runs the whole method of the paper once for this profile: the fine-tune (the loop written
# out further down, with the profile's settings), then the XGBoost step of the next chapter, then the
# evaluation on the test cells. It keeps everything in one folder of the run store
# (`runs/<profile>/<recipe>-<key>/`, the key a hash of every setting the fine-tune depends on and of the
# cells), so the later chapters (and a second execution of this one) load the finished run instead of
# training again. On a CPU the `sample` profile takes a while (the cell prints nothing until it is
# done); on a Colab GPU, a few minutes.

# %%
from allkit.study.book import shown

run = ctx.run(progress=False)
card = run.card
kind = "SYNTHETIC stand-in" if card["synthetic"] else "real C-NMC 2019 cells"
print(f"Backbone:  {card['backbone']} ({card['weights_note'].split(' (')[0]})")
print(f"Data:      {kind} in {shown(card['data'])}, {card['split']} split, "
      f"{card['image_size']} px")
if card.get("test_data"):
    print(f"Test part: {shown(card['test_data'])}, people who are not in the data "
          "above")
print(f"Device:    {card['device']}; profile {card['profile']}")
if card["backbone"] != ctx.config.backbone:
    print(f"\nNOTE: this run did NOT fine-tune the paper's {ctx.config.backbone}. "
          f"Everything measured in this chapter and the next ones comes from "
          f"{card['backbone']}.")
pd.DataFrame(card["counts"]).T.rename_axis("part")

# %% [markdown]
# The first lines say which network was trained. Where torchvision's ImageNet weights for EfficientNet-B0
# cannot be downloaded (a machine without internet), the book falls back to **EfficientNet-Lite0**, a
# close relative with the same 1280-dimensional pooled features whose ImageNet weights ship as a Python
# package. Lite0 drops B0's squeeze-and-excitation blocks {cite:p}`hu2018senet` and uses ReLU6 instead of
# the SiLU/swish activation {cite:p}`ramachandran2017swish,elfwing2018silu`: similar, not identical. If the
# note above appears, read every number in this book as "the paper's method with Lite0"; on Colab, with
# internet, the run uses the paper's B0.
#
# The table counts cells, ALL and HEM cells and **subjects** (people) in each part. The parts divide
# people, not cells: in the small profiles the training and validation parts share out the people of
# folds 0 and 1 (a *subject split*) and the test part is fold 2 (the `folds` split), so that the final
# scores come from people that no step of the method has seen; in the `paper` profile the split is the
# paper's. Where the run card names a separate test folder (the `+external` in the split's name), the
# test part is that folder's people instead. Either way the three parts share no subject; the next cell
# checks it, and the one after says why it matters.

# %%
data = run.load().data  # the run's split (from its seed) and its fine-tuned CNN
subjects = {part: set(ds.frame["subject"]) for part, ds in data.datasets.items()}
for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
    both = sorted(subjects[a] & subjects[b]) or "none"
    print(f"subjects in both {a} and {b}: {both}")

# %% [markdown]
# Why insist on it? Cells of one person share far more than their diagnosis: the same staining batch,
# the same microscope session, the same colour cast. A network can learn to recognise *the person* and,
# through the person, the label. If cells of the same person sat on both sides of the split, the
# validation accuracy would reward that shortcut and overstate how the model does on a new patient, which
# is the only case that matters in a clinic. With subject-disjoint parts, the validation curve below
# estimates exactly that.

# %% [markdown]
# ## The training loop, written out
#
# Here is the whole fine-tune in a few lines you can change: a model with a new head, the **Adamax**
# optimiser at 10⁻³ and the **cross-entropy** loss, then for every epoch a pass over the training cells in
# batches of 40. For each batch: the random flips and rotation of chapter 2, the conversion to the
# network's input, the forward pass, the loss between the predicted class probabilities and the true
# labels, `backward()` (the gradient of the loss with respect to every weight) and `optimizer.step()`
# (one small move of every weight against its gradient). The seeds of each epoch's shuffling,
# augmentation and dropout come from `epoch_seeds`, so the result does not depend on what ran before.

# %%
import copy

import torch
from torch import nn

from allkit.data import CellDataset, build_cache, make_loader
from allkit.train import Trainer, epoch_seeds
from allkit.transforms import BatchAugment, to_model_input


def fine_tune(model, cells, *, epochs=5, lr=1e-3, batch_size=40, seed=42,
              normalize=True):
    """The paper's fine-tune: Adamax, cross-entropy, flips and rotation."""
    optimizer = torch.optim.Adamax(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    augment = BatchAugment()  # flips with p = 0.2, rotation up to 10 degrees
    for epoch in range(1, epochs + 1):
        shuffle_seed, augment_seed, dropout_seed = epoch_seeds(seed, epoch)
        torch.manual_seed(dropout_seed)
        draws = torch.Generator().manual_seed(augment_seed)
        model.train()
        for images, labels in make_loader(cells, batch_size=batch_size, shuffle=True,
                                          seed=shuffle_seed):
            x = to_model_input(augment(images, generator=draws), normalize)
            loss = loss_fn(model(x), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


# %% [markdown]
# It runs for real on a small slice of this run's training people: 240 cells at 64 px, one epoch, a few
# seconds on a CPU. The library's `Trainer` (what `ctx.run()` and `allkit reproduce` call) is the same loop
# plus what a long run needs: a validation pass after every epoch, checkpoints to resume from, mixed
# precision on a GPU, a learning-rate schedule for other recipes, and a check that the loss did not
# diverge. Started from the same weights with the same seed, both must end with the same weights.

# %%
slice_ = data.datasets["train"].frame.sample(n=min(240, len(data.datasets["train"])),
                                              random_state=0)
small = CellDataset(build_cache(slice_, size=64, progress=False), slice_)
torch.manual_seed(ctx.config.seed)  # the new head starts from (seeded) random numbers
start = build_model(card["backbone"], card["weights"])  # ImageNet weights, new head
by_hand = fine_tune(copy.deepcopy(start), small, epochs=1, normalize=data.normalize)
library = copy.deepcopy(start)
trainer = Trainer(epochs=1, normalize=data.normalize, device="cpu", progress=False)
trainer.fit(library, small)
pairs = zip(by_hand.state_dict().values(), library.state_dict().values(), strict=True)
gap = max((a - b).abs().max().item() for a, b in pairs)
print(f"{len(small)} cells, one epoch: the largest difference between the two "
      f"models' weights is {gap:.1e}")
assert gap < 1e-5, "the loop in this page and the library's Trainer no longer agree"

# %% [markdown]
# Change a line of `fine_tune` (the optimiser, the loss, the augmentation) and run the cell again: the
# assertion then tells you that your loop is no longer the library's, and the exercises below measure
# what the change does.

# %% [markdown]
# ## The training curves (the paper's FIG 6)

# %%
from allkit.study import paper, plots

print(f"The paper's FIG 6: {paper.FIGURES[6]}. Ours, for this run:")
where = f"{card['backbone']}, {card['profile']} profile"
where += ", SYNTHETIC data" if card["synthetic"] else ""
plots.plot_training_curves(run.history, title=f"FIG 6: fine-tuning ({where})");

# %% [markdown]
# The left panel is the cross-entropy loss after each epoch, the right one the accuracy, for the
# training cells (blue) and the validation cells (orange). The training numbers are averaged over the
# epoch while the weights are still changing, on augmented images, with dropout on; the validation
# numbers are measured once at the end of the epoch, on plain images. A training curve far below the
# validation loss means the network fits its training people better than new people (overfitting); both
# curves still falling means more epochs would help. The cell below reads the curves in numbers.

# %%
history = pd.DataFrame(run.history).set_index("epoch")
columns = ["train_loss", "val_loss", "train_acc", "val_acc", "seconds",
           "images_per_second"]
display(history[[c for c in columns if c in history]].round(3))

last = history.iloc[-1]
val = card["counts"]["val"]
gap = last.train_acc - last.val_acc
print(f"After {len(history)} epoch(s): train accuracy {last.train_acc:.3f}, validation "
      f"accuracy {last.val_acc:.3f} (gap {gap:+.3f}); train loss "
      f"{last.train_loss:.3f}, validation loss {last.val_loss:.3f}.")
if len(history) > 1:
    best = int(history["val_loss"].idxmin())
    print(f"Lowest validation loss at epoch {best} of {len(history)}; validation "
          f"accuracy went from {history.val_acc.iloc[0]:.3f} (epoch 1) to "
          f"{last.val_acc:.3f}.")
else:
    print("Only one epoch in this profile: each curve is a single point, and the trend "
          "cannot be read.")
print(f"The validation cells come from {val['subjects']} people ({val['ALL']} ALL / "
      f"{val['HEM']} HEM cells); always answering their larger class would score "
      f"{max(val['ALL'], val['HEM']) / val['cells']:.3f}.")

# %% [markdown]
# How to read the gap: a positive gap (training accuracy above validation accuracy) is expected, since
# the network has seen the training people; a large gap after a few epochs says the model memorises its
# training people. A *negative* gap can happen too: augmentation and dropout make the training
# measurement harder than the validation one, and the validation people may simply be easier. With as
# few validation people as the last line counts, one unusual person moves the validation numbers a lot,
# and a validation accuracy means little until it is compared with that last line: the score of a
# "model" that always answers the larger class.
#
# The validation cells are used only to watch training (and, in the next chapter, XGBoost). The test
# cells play no part in any choice, so that chapter 5 measures the model on people no step has looked
# at.

# %% [markdown]
# ## How long does it take?

# %%
speed = history["images_per_second"].mean()
full_training_set = constants.EXPECTED_COUNTS["training"]
print(f"Training speed here: {speed:.1f} images/second on {card['device']} "
      f"({run.metrics['seconds']['finetune']:.0f} s for fine-tuning in total).")
minutes = full_training_set / speed / 60
hours = constants.EPOCHS * minutes / 60
print(f"At that speed, one epoch over the full C-NMC training set "
      f"({full_training_set:,} cells at {card['image_size']} px) would take about "
      f"{minutes:.0f} minutes, and the paper's {constants.EPOCHS} epochs about "
      f"{hours:.1f} hours.")

# %% [markdown]
# These speeds depend on the machine (and on the image size of the profile). A CPU trains this network
# at a few to a few dozen images per second; a Colab GPU at hundreds, which is why the paper's profile is
# meant for Colab. The fine-tuned network is saved in the run folder; the next chapter takes it apart:
# everything but its last layer becomes a feature extractor for XGBoost.
#
# ## Summary
#
# - The paper's fine-tune starts from ImageNet weights, swaps the 1000-class head for a new, randomly
#   initialised `Linear(1280, 2)`, and trains every layer for 5 epochs with Adamax at 10⁻³, batches of 40
#   and the cross-entropy loss.
# - The loop is a few lines: augment, forward pass, loss, `backward()`, `step()`. The library's `Trainer`
#   is the same loop (the chapter checks that both end with the same weights) plus a validation pass,
#   checkpoints and mixed precision.
# - The training, validation and test parts share no person, so the validation curve estimates how the
#   model does on new people, not on people it has seen.
# - FIG 6 is read through the gap between the training and the validation curves, and the validation
#   accuracy beside the score of always answering the larger class; with few validation people, one
#   person moves it a lot. The training speed printed belongs to this machine.
#
# Next, {doc}`05_hybrid` takes the fine-tuned network apart and lets XGBoost decide on its features.

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-04-one-epoch
# What does a single epoch do? Take 240 training and 160 validation cells of this run's split, decoded
# at 64 px so that it runs in seconds on a CPU, build a fresh model (ImageNet weights and a new random
# head, as `ctx.run()` does), and measure its validation loss and accuracy before and after one epoch
# of the paper's recipe (`Trainer(epochs=1)`). Compare both with always answering the larger class.
# ```
#
# ```{solution-start} ex-04-one-epoch
# :class: dropdown
# ```

# %%
import torch

from allkit.data import CellDataset, build_cache
from allkit.inference import evaluate, predict_proba

# A few hundred cells of the run's own training and validation people, decoded at 64 px.
frames = {part: data.datasets[part].frame.sample(
              n=min(n, len(data.datasets[part])), random_state=0)
          for part, n in (("train", 240), ("val", 160))}
cache = build_cache(pd.concat(frames.values(), ignore_index=True), size=64,
                    progress=False)
tiny = {part: CellDataset(cache, frame) for part, frame in frames.items()}



def called_all(model) -> float:
    """The share of validation cells the model calls ALL."""
    proba = predict_proba(model, tiny["val"], normalize=data.normalize)
    return float((proba[:, 1] > 0.5).mean())


torch.manual_seed(ctx.config.seed)  # the new head starts from (seeded) random numbers
model = build_model(card["backbone"], card["weights"])  # ImageNet weights, new head
before = evaluate(model, tiny["val"], normalize=data.normalize)
before["all"] = called_all(model)
trainer = Trainer(epochs=1, normalize=data.normalize, progress=False)
after = trainer.fit(model, tiny["train"], tiny["val"]).history_[-1]
steps = -(-len(tiny["train"]) // trainer.batch_size)
print(f"One epoch = {steps} optimiser steps of {trainer.batch_size} cells "
      f"({after['seconds']:.0f} s at 64 px).")
print(f"validation before: loss {before['loss']:.3f}, accuracy "
      f"{before['accuracy']:.3f}, {before['all']:.0%} of the cells called ALL")
print(f"validation after:  loss {after['val_loss']:.3f}, accuracy "
      f"{after['val_acc']:.3f}, {called_all(model):.0%} of the cells called ALL")
share = {part: ds.labels.float().mean().item() for part, ds in tiny.items()}
print(f"ALL cells: {share['train']:.0%} of the training cells, {share['val']:.0%} of "
      f"the validation cells; always the larger class scores "
      f"{max(share['val'], 1 - share['val']):.3f}")

# %% [markdown]
# Before training, the new head is a random linear layer on top of ImageNet features: its accuracy says
# nothing about the features. A model that calls (nearly) every cell the same class scores exactly
# that class's share of the validation cells, so read each accuracy together with the share of cells
# called ALL next to it. One epoch is only the handful of optimiser steps printed above, and the first
# thing such a short training usually teaches the head is the class balance of the *training* cells,
# which is not that of the validation people. Whether the accuracy ends above the last line (the
# larger class) is the real test; with so few cells, tiny images and new people it often does not, and
# that is the point of the exercise: a training step that moves the numbers is not yet a model that
# works. Change the size to 128 px or the number of cells and watch the time and the numbers.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-04-cross-entropy
# The history's `val_loss` is the mean cross-entropy over the validation cells. Recompute it by hand
# for this run's fine-tuned network: get its two outputs per cell with `allkit.inference.predict`,
# turn them into probabilities with a softmax, and average −log of the probability of the true class.
# Which cells cost the most?
# ```
#
# ```{solution-start} ex-04-cross-entropy
# :class: dropdown
# ```

# %%
import numpy as np

from allkit.inference import predict

val_cells = data.datasets["val"]
logits = predict(run.model, val_cells, normalize=data.normalize)  # (cells, 2)
p = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
y = val_cells.labels.numpy()
per_cell = -np.log(p[np.arange(len(y)), y])  # the loss of each cell
equal = np.isclose(per_cell.mean(), last.val_loss, atol=1e-4)
print(f"cross-entropy by hand {per_cell.mean():.4f}; history, last epoch "
      f"{last.val_loss:.4f}; equal: {equal}")
print(f"accuracy by hand {(p.argmax(1) == y).mean():.4f}; history {last.val_acc:.4f}")
worst = np.sort(per_cell)[::-1]
tenth = max(1, len(worst) // 10)
print(f"The worst {tenth} cells (a tenth) carry "
      f"{worst[:tenth].sum() / worst.sum():.0%} of the loss; the worst one had "
      f"P(true class) = {np.exp(-worst[0]):.2g}.")

# %% [markdown]
# The two numbers agree because the run keeps the weights of its last epoch and `Trainer.fit` measures
# the validation loss with the same `predict` (evaluation preprocessing, no augmentation, dropout off).
# Cross-entropy punishes confident mistakes hard: a cell given probability 0.5 for its true class costs
# −log 0.5 ≈ 0.69, one given 0.01 costs 4.6. That is why a few confidently wrong cells (often all from
# one validation person) can carry a large share of the loss, and why the validation loss can rise while
# the validation accuracy stays put.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-04-weights-moved
# "Fine-tuning updates every layer." By how much? Build the network as it was before training
# (`build_model` with the run's backbone and ImageNet weights) and compute, for each stage of the
# network, the relative change ‖w_after − w_before‖ / ‖w_before‖ of its weights. Which stages moved
# most? Why is the head left out?
# ```
#
# ```{solution-start} ex-04-weights-moved
# :class: dropdown
# ```

# %%
import matplotlib.pyplot as plt

head_path = get_backbone(card["backbone"]).head
start = dict(build_model(card["backbone"], card["weights"]).named_parameters())
moved, size = {}, {}
with torch.no_grad():
    for name, weight in run.model.named_parameters():
        parts = name.split(".")
        if name.startswith(head_path):
            continue  # the new head started from random numbers: there is no "before"
        stage = ".".join(parts[:2]) if parts[0] in ("features", "_blocks") else parts[0]
        diff = float((weight - start[name]).square().sum())
        moved[stage] = moved.get(stage, 0.0) + diff
        size[stage] = size.get(stage, 0.0) + float(start[name].square().sum())
change = pd.Series({stage: (moved[stage] / size[stage]) ** 0.5 for stage in moved})

fig, ax = plt.subplots(figsize=(9, 3.2), layout="constrained")
change.plot.bar(ax=ax, color="tab:blue")
ax.set_ylabel("relative change")
ax.set_title(f"How far fine-tuning moved each stage of {card['backbone']} "
             "(input -> output)")
plt.show()
half = len(change) // 2
print(f"Largest change: {change.idxmax()} ({change.max():.2%}); smallest: "
      f"{change.idxmin()} ({change.min():.2%}).")
print(f"Mean change, first half of the stages {change.iloc[:half].mean():.2%}, second "
      f"half {change.iloc[half:].mean():.2%}.")

# %% [markdown]
# Every pretrained stage moved, but by a small fraction of its size: fine-tuning adjusts the ImageNet
# weights rather than replacing them, which is why a few epochs on a few thousand cells are enough.
# Which stages move most depends on the run (the printout says it for this one); a common pattern is
# that the last stages, whose features are the most specific to ImageNet's classes, move more than the
# first ones, which detect edges and colours useful for any image. The head is left out because it has
# no "before": it was created for this task from random numbers, so all of it is learnt. The few
# thousand weights of the head (counted at the top of this chapter) and the millions of the rest are
# trained by the same optimiser steps, with the same learning rate.
#
# ```{solution-end}
# ```

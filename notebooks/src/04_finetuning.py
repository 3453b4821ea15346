# %% [markdown]
# # 4. Fine-tuning the CNN
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/allkit/allkit/blob/main/notebooks/04_finetuning.ipynb)
#
# The paper {cite:p}`somu2024advancing` fine-tunes an ImageNet-pretrained EfficientNet-B0
# {cite:p}`tan2019efficientnet` on the C-NMC 2019 cells, and its FIG 6 shows the training curves. This
# chapter runs that step with the book's profile, draws the curves, and reads them: how fast the model
# learns, whether it generalises to people it has never seen, and how long the training takes here.
#
# **Learning goals.** After this chapter you can
# - replace the 1000-class ImageNet head of a pretrained CNN by a new 2-class head, and say which weights
#   are new and which are pretrained;
# - read a PyTorch fine-tuning loop line by line: augmentation, forward pass, cross-entropy, `backward()`,
#   `step()`, and a validation pass after every epoch;
# - read training curves, and tell a model that learns *cells* from one that learns the *people* it saw.

# %%
# Setup: on Colab this installs allkit and fetches C-NMC 2019 (kagglehub); elsewhere it only prints the run card.
try:
    import allkit  # noqa: F401
except ImportError:
    %pip install -q "allkit[download,offline] @ git+https://github.com/allkit/allkit"
from allkit.study.book import setup

ctx = setup("04_finetuning")

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

profile = ctx.profile
recipe = pd.DataFrame(
    {
        "paper": ["efficientnet_b0", "ImageNet", constants.EPOCHS, constants.BATCH_SIZE,
                  constants.LEARNING_RATE, "Adamax", constants.IMAGE_SIZE, "none ([0, 1])", "all"],
        f"this book ({profile.name} profile)": [
            profile.backbone, profile.weights, profile.epochs, profile.batch_size, profile.lr, "Adamax",
            profile.image_size, "the backbone's mean/std" if profile.normalize else "none ([0, 1])",
            profile.max_train_cells or "all"],
    },
    index=["backbone", "pretrained weights", "epochs", "batch size", "learning rate", "optimiser",
           "image size (px)", "normalisation", "training cells"],
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

backbone = get_backbone(profile.backbone)
imagenet_head = head(build_model(backbone.name, weights=None, num_classes=1000), backbone)
our_head = head(build_model(backbone.name, weights=None), backbone)
print(f"{backbone.name}: the layer at {backbone.head!r}")
print(f"  as trained on ImageNet: {imagenet_head}")
print(f"  for C-NMC:              {our_head}  <- new, randomly initialised")
print(f"The new head has {sum(p.numel() for p in our_head.parameters()):,} parameters; the rest of the "
      f"network about {backbone.num_params - sum(p.numel() for p in imagenet_head.parameters()):,}.")

# %% [markdown]
# ## The training loop
#
# This is the code that fine-tunes the network in this book; the CLI (`allkit reproduce`) and every
# chapter call the very same functions. First one **epoch**, one pass over the training cells in
# batches of 40. For each batch: the random flips and rotation of the previous chapter, the conversion
# to the network's input, the forward pass, the **cross-entropy** between the predicted class
# probabilities and the true labels, then `backward()` (the gradient of the loss with respect to every
# weight) and `optimizer.step()` (one small move of every weight against its gradient). The lines about
# `scaler`, `dtype` and `aux` only matter on a GPU or for Inception-v3.

# %%
from allkit.study.book import show_source
from allkit.train import Trainer, train_one_epoch

show_source(train_one_epoch)

# %% [markdown]
# And the loop over epochs, `Trainer.fit`. It creates the **Adamax** optimiser with the learning rate
# 10⁻³ and the `CrossEntropyLoss`, then, for each epoch: draws that epoch's random seeds (so that a run
# interrupted and resumed ends with exactly the same weights), shuffles the training cells, runs
# `train_one_epoch`, and measures the loss and accuracy on the **validation** cells, which are never
# trained on. The helpers it calls (`_check`, `_kit`, `_remember`, `_save`) check the arguments, set up
# the optional extras (learning-rate schedule, mixed precision), remember the best epoch and write a
# checkpoint; they do not change the method.

# %%
show_source(Trainer.fit)

# %% [markdown]
# ## Training (or reusing the finished run)
#
# `ctx.run()` runs the whole method of the paper once for this profile: the fine-tune above (called
# as below, with the profile's settings), then the XGBoost step of the next chapter, then the
# evaluation. It writes everything to a run folder, so the later chapters (and a second execution of
# this one) load the finished run instead of training again. On a CPU the `sample` profile takes a
# while; on a Colab GPU, a few minutes.

# %%
from allkit.study.run import finetune

show_source(finetune)

# %%
run = ctx.run()
card = run.card
print(f"Backbone:  {card['backbone']} ({card['weights_note']})")
print(f"Data:      {'SYNTHETIC stand-in' if card['synthetic'] else 'real C-NMC 2019 cells'} in {card['data']}, "
      f"{card['split']} split, {card['image_size']} px")
print(f"Device:    {card['device']}; profile {card['profile']}")
if card["backbone"] != ctx.profile.backbone:
    print(f"\nNOTE: this run did NOT fine-tune the paper's {ctx.profile.backbone}. Everything measured in this "
          f"chapter and the next ones comes from {card['backbone']}.")
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
# The table counts cells, ALL and HEM cells and **subjects** (people) in each part. The three parts share
# no subject; the next cell checks it, and the one after says why it matters.

# %%
from allkit.study.run import rebuild_prepared

prepared = rebuild_prepared(run, progress=False)  # the run's split (recomputed from the seed if loaded)
subjects = {part: set(ds.frame["subject"]) for part, ds in prepared.datasets.items()}
for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
    print(f"subjects in both {a} and {b}: {sorted(subjects[a] & subjects[b]) or 'none'}")

# %% [markdown]
# Why insist on it? Cells of one person share far more than their diagnosis: the same staining batch,
# the same microscope session, the same colour cast. A network can learn to recognise *the person* and,
# through the person, the label. If cells of the same person sat on both sides of the split, the
# validation accuracy would reward that shortcut and overstate how the model does on a new patient, which
# is the only case that matters in a clinic. With subject-disjoint parts, the validation curve below
# estimates exactly that.

# %% [markdown]
# ## The training curves (the paper's FIG 6)

# %%
from allkit.study import plots

where = f"{card['backbone']}, {card['profile']} profile{', SYNTHETIC data' if card['synthetic'] else ''}"
plots.plot_training_curves(run.history, title=f"Fine-tuning ({where})");

# %% [markdown]
# The left panel is the cross-entropy loss after each epoch, the right one the accuracy, for the
# training cells (blue) and the validation cells (orange). The training numbers are averaged over the
# epoch while the weights are still changing, on augmented images, with dropout on; the validation
# numbers are measured once at the end of the epoch, on plain images. A training curve far below the
# validation loss means the network fits its training people better than new people (overfitting); both
# curves still falling means more epochs would help. The cell below reads the curves in numbers.

# %%
history = pd.DataFrame(run.history).set_index("epoch")
columns = ["train_loss", "val_loss", "train_acc", "val_acc", "seconds", "images_per_second"]
display(history[[c for c in columns if c in history]].round(3))

last = history.iloc[-1]
print(f"After {len(history)} epoch(s): train accuracy {last.train_acc:.3f}, validation accuracy {last.val_acc:.3f} "
      f"(gap {last.train_acc - last.val_acc:+.3f}); train loss {last.train_loss:.3f}, "
      f"validation loss {last.val_loss:.3f}.")
if len(history) > 1:
    best = int(history["val_loss"].idxmin())
    print(f"Lowest validation loss at epoch {best} of {len(history)}; validation accuracy went from "
          f"{history.val_acc.iloc[0]:.3f} (epoch 1) to {last.val_acc:.3f}.")
else:
    print("Only one epoch in this profile: each curve is a single point, and the trend cannot be read.")

# %% [markdown]
# How to read the gap: a positive gap (training accuracy above validation accuracy) is expected, since
# the network has seen the training people; a large gap after a few epochs says the model memorises its
# training people. A *negative* gap can happen too: augmentation and dropout make the training
# measurement harder than the validation one, and the validation people may simply be easier (with three
# or four validation subjects, one unusual person moves the number a lot).
#
# The validation cells are used only to watch training (and, in the next chapter, XGBoost). The test
# cells play no part in any choice, so that chapter 5 measures the model on people no step has looked at.

# %% [markdown]
# ## How long does it take?

# %%
speed = history["images_per_second"].mean()
full_training_set = constants.EXPECTED_COUNTS["training"]
print(f"Training speed here: {speed:.1f} images/second on {card['device']} "
      f"({run.metrics['seconds']['finetune']:.0f} s for fine-tuning in total).")
print(f"At that speed, one epoch over the full C-NMC training set ({full_training_set:,} cells at "
      f"{card['image_size']} px) would take about {full_training_set / speed / 60:.0f} minutes, and the paper's "
      f"{constants.EPOCHS} epochs about {constants.EPOCHS * full_training_set / speed / 3600:.1f} hours.")

# %% [markdown]
# These speeds depend on the machine (and on the image size of the profile). A CPU trains this network
# at a few to a few dozen images per second; a Colab GPU at hundreds, which is why the paper's profile is
# meant for Colab. The fine-tuned network is saved in the run folder; the next chapter takes it apart:
# everything but its last layer becomes a feature extractor for XGBoost.

"""Fine-tuning with the paper's recipe: Adamax, lr 1e-3, batch 40, 5 epochs, cross-entropy.

::

    from allkit.train import Trainer

    trainer = Trainer(checkpoint_dir="runs/b0")           # paper defaults
    trainer.fit(model, train_ds, val_ds)                   # the model trains in place
    trainer.history_                                       # one dict per epoch
    trainer.evaluate(model, test_ds)                       # {"loss": ..., "accuracy": ..., "n": ...}
    trainer.predict_proba(model, test_ds)                  # (N, 2): columns [HEM, ALL]

    Trainer(checkpoint_dir="runs/b0").fit(model, train_ds, val_ds, resume=True)   # after an interruption

How a batch is made: the ``CellDataset`` reads uint8 pixels for the whole batch from the memory-mapped cache
in one indexing operation; the uint8 batch moves to the device (4x less to copy than float32); the paper's
augmentation (:class:`allkit.transforms.BatchAugment`: flips 0.2/0.2, rotation +-10 deg, drawn per sample)
runs there; then :func:`allkit.transforms.to_model_input` scales to [0, 1] and normalises.

Reproducibility: every epoch's randomness (shuffling order, augmentation draws, dropout and stochastic depth)
is derived from ``(seed, epoch)`` alone, so a run resumed from the checkpoint of epoch *k* ends with exactly
the weights of an uninterrupted run on the CPU (on CUDA, cuDNN's non-deterministic kernels allow tiny
differences). Checkpoints hold only tensors and plain Python containers and load with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from allkit.atomic import torch_save
from allkit.constants import BATCH_SIZE, EPOCHS, LABEL_ALL, LABEL_HEM, LEARNING_RATE, SEED
from allkit.errors import AllkitError, ModelError
from allkit.models import main_logits as _main_logits
from allkit.perf import (
    autocast_dtype,
    configure_threads,
    make_grad_scaler,
    optimize_for_inference,
    select_device,
    tune_malloc,
    use_channels_last,
)

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "Trainer",
    "TrainingDivergedError",
    "batched_inference",
    "epoch_seeds",
    "load_checkpoint",
]

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "allkit-trainer-checkpoint"
CHECKPOINT_VERSION = 1
OPTIMIZERS = ("adamax", "adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
# Parameters that change the trained weights: a resumed run must use the same values.
_RESULT_PARAMS = ("batch_size", "lr", "optimizer", "seed", "class_weight", "normalize", "augment",
                  "max_batches", "aux_weight", "lr_schedule", "warmup_epochs", "label_smoothing")
# Their values in checkpoints written before these parameters existed.
_RESULT_DEFAULTS = {"lr_schedule": "constant", "warmup_epochs": 0.0, "label_smoothing": 0.0}
# Parameters that may change on resume (different machine), at the price of bit-exactness.
_PLATFORM_PARAMS = ("device", "amp", "channels_last")


class TrainingDivergedError(AllkitError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, loss: float, lr: float, checkpoint: Path | None):
        self.epoch, self.batch, self.loss, self.lr, self.checkpoint = epoch, batch, loss, lr, checkpoint
        kept = (f"the checkpoint {checkpoint} (epoch {epoch - 1}) is kept" if checkpoint is not None
                else "no checkpoint of an earlier epoch exists")
        restored = f"the end of epoch {epoch - 1}" if epoch > 1 else "their values before training"
        super().__init__(
            f"training diverged: loss is {loss} at epoch {epoch}, batch {batch} (lr={lr:g}). Try a lower "
            f"learning rate (e.g. lr={lr / 10:g}) or amp=False. The model's weights were restored to "
            f"{restored}; {kept}"
        )


class CheckpointError(ModelError):
    """A trainer checkpoint is missing, unreadable or does not match the run being resumed."""


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int, int]:
    """Three independent 63-bit seeds (shuffle, augmentation, dropout) for ``epoch``: a function of
    ``(seed, epoch)`` only, which is what makes resumed runs identical to uninterrupted ones."""
    words = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(6, dtype=np.uint32)
    return tuple((int(words[2 * i]) << 31) ^ int(words[2 * i + 1]) for i in range(3))  # type: ignore


def _check_normalize(normalize) -> None:
    if isinstance(normalize, bool):
        return
    ok = (isinstance(normalize, Sequence) and len(normalize) == 2
          and all(isinstance(s, Sequence) and len(s) == 3 for s in normalize))
    if not ok:
        raise ValueError(f"normalize={normalize!r}; expected True (ImageNet statistics), False ([0, 1] "
                         "only) or (mean, std) with 3 values each")


def _model_input(images: torch.Tensor, normalize, channels_last: bool) -> torch.Tensor:
    """uint8 batch on its device -> float32 model input (``normalize``: bool or ``(mean, std)``)."""
    from allkit.transforms import to_model_input

    if isinstance(normalize, bool):
        x = to_model_input(images, normalize=normalize, channels_last=channels_last)
    else:
        x = to_model_input(images, normalize=False)
        mean = torch.tensor(normalize[0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(normalize[1], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    # The cache's pixels are HWC, so a batch straight from it is already channels-last in memory:
    # make the layout what was asked for either way.
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _EpochShuffle(torch.utils.data.Sampler):
    """A random order that depends only on the seed given with :meth:`set_seed` (one per epoch).

    ``DataLoader(shuffle=True)`` draws its order from a generator that the loader also uses for worker
    seeds, and persistent workers change when those draws happen: an epoch's order would then depend on
    whether the loader was fresh (a resumed run) or reused (an uninterrupted one).
    """

    def __init__(self, n: int):
        self.n, self.seed = n, 0

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def _whole_batch(batch):
    return batch  # CellDataset.__getitems__ already returns (images, labels)


def _loader(dataset, *, batch_size: int, device: torch.device, num_workers, sampler=None):
    """Batches of ``dataset`` in order, or in ``sampler``'s order. The loader has its own generator, so
    iterating it never consumes torch's global RNG (which drives dropout)."""
    from allkit.data.loader import default_num_workers

    workers = default_num_workers(device) if num_workers is None else int(num_workers)
    batched = hasattr(dataset, "__getitems__")  # CellDataset: whole batches from the memory map
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", collate_fn=_whole_batch if batched else None,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
    )


def _dataset_labels(dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    frame = getattr(dataset, "frame", None)
    if frame is not None and "label" in frame:
        return frame["label"].to_numpy().astype(np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def _aux_logits(output) -> torch.Tensor | None:
    """Inception's auxiliary logits in train mode (``InceptionOutputs(logits, aux_logits)``), else None."""
    if isinstance(output, torch.Tensor):
        return None
    aux = getattr(output, "aux_logits", None)
    if aux is None and isinstance(output, (tuple, list)) and len(output) > 1:
        aux = output[1]
    return aux if isinstance(aux, torch.Tensor) else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _prepare_module(module, device: torch.device, channels_last: bool):
    if isinstance(module, nn.Module):
        module.to(device)
        if channels_last:
            module.to(memory_format=torch.channels_last)


def _iterate(model_fn, dataset, *, batch_size, device, channels_last, normalize, amp_dtype, num_workers,
             limit, progress, desc) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(output, labels) per batch, in dataset order, under inference_mode with ``model_fn`` in eval mode."""
    loader = _loader(dataset, batch_size=batch_size, device=device, num_workers=num_workers)
    total = len(loader) if limit is None else min(limit, len(loader))
    was_training = model_fn.training if isinstance(model_fn, nn.Module) else None
    if was_training:
        model_fn.eval()
    try:
        with torch.inference_mode():
            bar = tqdm(itertools.islice(loader, total), total=total, desc=desc, unit="batch",
                       disable=not progress, leave=False)
            for images, labels in bar:
                images = images.to(device, non_blocking=True)
                x = _model_input(images, normalize, channels_last)
                with _autocast(device, amp_dtype):
                    out = model_fn(x)
                yield out, labels
            bar.close()
    finally:
        if was_training:
            model_fn.train()


def batched_inference(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    dataset,
    batch_size: int = BATCH_SIZE,
    device: str | torch.device = "auto",
    channels_last: bool | str = "auto",
    progress: bool = False,
    *,
    normalize=True,
    amp: bool | str = False,
    fuse_batchnorm: bool = True,
    num_workers: int | None = None,
    to_cpu: bool = True,
    desc: str = "Inference",
) -> Iterator[torch.Tensor]:
    """Run ``model_fn`` over ``dataset`` in order, yielding its output for each batch (float32, detached).

    Evaluation preprocessing only: cached uint8 pixels, read a batch at a time -> ``device`` ->
    ``to_model_input`` (``normalize``: ``True`` ImageNet statistics, ``False`` [0, 1], or ``(mean, std)``),
    under ``torch.inference_mode``; a dataset ``transform`` still applies if it has one.

    If ``model_fn`` is an ``nn.Module``: with ``fuse_batchnorm`` (default) a copy with batch norm folded
    into the convolutions (:func:`allkit.perf.optimize_for_inference`; same outputs up to float rounding,
    ~10% faster on CPU) runs instead, and ``model_fn`` itself is left as it is; without it ``model_fn`` is
    moved to ``device`` (channels-last when used) and run in eval mode, its train/eval mode restored
    afterwards. Any other callable (e.g. a lambda around a model) is called as is: the caller puts the
    model in eval mode on the device.

    ``device="auto"`` picks CUDA > MPS > CPU; ``channels_last="auto"`` follows
    :func:`allkit.perf.use_channels_last`. ``amp`` (default ``False``: exact fp32 outputs) follows
    :func:`allkit.perf.autocast_dtype` for inference: ``"auto"`` gives bf16/fp16 on CUDA and bf16 on CPUs
    with AVX-512-BF16 or AMX (~1.4x faster features on a Zen 4 CPU, ~1e-2 relative difference).
    On the CPU :func:`allkit.perf.tune_malloc` is applied (process-wide). Outputs are moved to the CPU
    unless ``to_cpu=False``; concatenate them with ``torch.cat``.
    """
    dev = select_device(device)
    if dev.type == "cpu":
        tune_malloc()
    _check_normalize(normalize)
    cl = use_channels_last(dev, channels_last)
    amp_dtype = autocast_dtype(dev, amp, training=False)
    if isinstance(model_fn, nn.Module) and fuse_batchnorm:
        model_fn = optimize_for_inference(model_fn)
    _prepare_module(model_fn, dev, cl)
    for out, _labels in _iterate(model_fn, dataset, batch_size=batch_size, device=dev, channels_last=cl,
                                 normalize=normalize, amp_dtype=amp_dtype, num_workers=num_workers,
                                 limit=None, progress=progress, desc=desc):
        out = out.detach().float()
        yield out.cpu() if to_cpu else out


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _atomic_save(payload: dict, path: Path) -> None:
    torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a trainer checkpoint (a file, or the ``checkpoint_dir`` holding ``last.pt``) with
    ``weights_only=True``. Keys: ``format``, ``version``, ``epoch``, ``model``, ``optimizer``, ``scaler``,
    ``history``, ``params``, ``best_epoch``, ``best_val_loss``, ``best_model``, ``rng``, ``n_train``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no trainer checkpoint at {path}; expected a file written by Trainer.fit "
                              f"(checkpoint_dir/{CHECKPOINT_NAME})")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, pickle with objects, not a torch file ...
        raise CheckpointError(f"cannot read the trainer checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an allkit trainer checkpoint (no format={CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; this allkit reads "
                              f"version {CHECKPOINT_VERSION}")
    return payload


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    """Fine-tune a classifier on a :class:`allkit.data.CellDataset` (labels HEM = 0, ALL = 1).

    Args:
        epochs, batch_size, lr: the paper's 5, 40 and 1e-3 by default.
        optimizer: ``"adamax"`` (the paper), ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9), or a callable
            ``params -> torch.optim.Optimizer`` (then ``lr`` is only recorded).
        device: ``"auto"`` (CUDA > MPS > CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        amp: mixed precision, see :func:`allkit.perf.autocast_dtype` (``"auto"``: CUDA yes; CPU only with
            AMX, as bf16 training measured slower than fp32 on AVX-512-BF16 without AMX).
        channels_last: NHWC memory format, see :func:`allkit.perf.use_channels_last`.
        seed: every epoch's shuffling, augmentation and dropout derive from ``(seed, epoch)``.
        class_weight: ``None``, ``"balanced"`` (scikit-learn's ``compute_class_weight`` on the training
            labels) or ``[w_hem, w_all]``; weights the training loss only. Stored as ``class_weight_``.
        keep_best: at the end, restore the weights of the epoch with the lowest validation loss (ties:
            the earlier epoch). Needs a validation set.
        checkpoint_dir: write ``checkpoint_dir/last.pt`` atomically after every epoch (needed for ``resume``).
        normalize: ``True`` ImageNet statistics, ``False`` [0, 1] (the paper's ``ToTensor`` only), or
            ``(mean, std)`` (e.g. ``get_spec("efficientnet_lite0").mean/.std``).
        augment: ``True`` the paper's flips and rotation, ``False`` none, or a module ``(batch, generator)``
            -> batch such as a custom :class:`allkit.transforms.BatchAugment`.
        progress: tqdm bar per epoch (loss and accuracy so far).
        num_workers: DataLoader processes (``None``: 0 on CPU, 2 on CUDA).
        max_batches: stop each epoch (and each validation pass during ``fit``) after this many batches:
            quick runs and CI.
        aux_weight: weight of Inception-v3's auxiliary loss in train mode (0.4, torchvision's recipe).
        lr_schedule: ``"constant"`` (the paper) or ``"cosine"``: the learning rate follows a half cosine from
            ``lr`` to 0 over all training steps, after a linear warm-up over the first ``warmup_epochs``.
            Computed from the step number, so a resumed run follows the same schedule.
        warmup_epochs: length of the linear warm-up of the cosine schedule (may be fractional).
        label_smoothing: cross-entropy label smoothing of the training loss (0: none, the paper).

    Fitted attributes: ``history_`` (one dict per epoch: ``epoch`` (1-based), ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc`` (None without validation), ``seconds`` (whole epoch), ``train_seconds``,
    ``train_images``, ``images_per_second`` (training), ``lr``), ``best_epoch_`` (lowest validation loss;
    None without validation), ``device_``, ``class_weight_`` (None or a float tensor [w_hem, w_all]),
    ``checkpoint_path_``.

    The training loss is the (class-weighted) cross-entropy that is optimised, measured on augmented
    images in train mode; ``val_loss`` and :meth:`evaluate` use plain unweighted cross-entropy in eval mode.
    """

    def __init__(
        self,
        epochs: int = EPOCHS,
        batch_size: int = BATCH_SIZE,
        lr: float = LEARNING_RATE,
        optimizer: str | Callable = "adamax",
        device: str | torch.device = "auto",
        amp: bool | str = "auto",
        channels_last: bool | str = "auto",
        seed: int = SEED,
        class_weight: str | Sequence[float] | None = None,
        keep_best: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        normalize=True,
        augment: bool | nn.Module = True,
        progress: bool = True,
        num_workers: int | None = None,
        max_batches: int | None = None,
        aux_weight: float = 0.4,
        lr_schedule: str = "constant",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.seed = seed
        self.class_weight = class_weight
        self.keep_best = keep_best
        self.checkpoint_dir = checkpoint_dir
        self.normalize = normalize
        self.augment = augment
        self.progress = progress
        self.num_workers = num_workers
        self.max_batches = max_batches
        self.aux_weight = aux_weight
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing

    # ---------------------------------------------------------------- parameters
    def _check_params(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive integer")

        positive_int("epochs")
        positive_int("batch_size")
        if self.max_batches is not None:
            positive_int("max_batches")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r}; expected a positive number (the paper uses {LEARNING_RATE})")
        if not callable(self.optimizer) and str(self.optimizer).lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; expected one of {OPTIMIZERS} or a callable "
                             "params -> torch.optim.Optimizer")
        cw = self.class_weight
        if isinstance(cw, str):
            ok = cw == "balanced"
        else:
            ok = cw is None or (isinstance(cw, (Sequence, np.ndarray, torch.Tensor)) and len(cw) == 2)
        if not ok:
            raise ValueError(f"class_weight={cw!r}; expected None, 'balanced' or [w_hem, w_all]")
        if not (isinstance(self.augment, bool) or callable(self.augment)):
            raise ValueError(f"augment={self.augment!r}; expected True, False or a module (batch, generator)")
        _check_normalize(self.normalize)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if not (isinstance(self.warmup_epochs, (int, float)) and 0 <= self.warmup_epochs < self.epochs):
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r}; expected a number in [0, epochs)")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"label_smoothing={self.label_smoothing!r}; expected a number in [0, 1)")

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimisation step ``step`` (0-based) out of ``total_steps``."""
        if self.lr_schedule == "constant":
            return float(self.lr)
        warmup = self.warmup_epochs / self.epochs * total_steps
        if step < warmup:
            return float(self.lr) * (step + 1) / warmup
        progress = (step - warmup) / max(1.0, total_steps - warmup)
        return float(self.lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def get_params(self) -> dict:
        """The constructor arguments, as plain values (what checkpoints record)."""
        def plain(value):
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
            if isinstance(value, torch.device):
                return str(value)
            if isinstance(value, (np.ndarray, torch.Tensor)):
                return [float(v) for v in value.tolist()]
            if isinstance(value, np.generic):
                return value.item()
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            return repr(value)

        names = ("epochs", "batch_size", "lr", "optimizer", "device", "amp", "channels_last", "seed",
                 "class_weight", "keep_best", "checkpoint_dir", "normalize", "augment", "progress",
                 "num_workers", "max_batches", "aux_weight", "lr_schedule", "warmup_epochs", "label_smoothing")
        return {name: plain(getattr(self, name)) for name in names}

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / CHECKPOINT_NAME

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ModelError("the model has no trainable parameters (all have requires_grad=False)")
        if callable(self.optimizer):
            return self.optimizer(params)
        name = self.optimizer.lower()
        if name == "adamax":
            return torch.optim.Adamax(params, lr=self.lr)
        if name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)

    def _class_weights(self, train) -> torch.Tensor | None:
        if self.class_weight is None:
            return None
        if isinstance(self.class_weight, str):  # "balanced"
            from sklearn.utils.class_weight import compute_class_weight

            labels = _dataset_labels(train)
            classes = np.array([LABEL_HEM, LABEL_ALL])
            present = set(np.unique(labels).tolist())
            if present != set(classes.tolist()):
                raise ValueError(f"class_weight='balanced' needs both classes (HEM=0, ALL=1) in the training "
                                 f"set; it has labels {sorted(present)}")
            weights = compute_class_weight("balanced", classes=classes, y=labels)
        else:
            cw = self.class_weight
            weights = np.asarray(cw.tolist() if isinstance(cw, torch.Tensor) else cw, dtype=np.float64)
            if not (np.all(np.isfinite(weights)) and np.all(weights > 0)):
                raise ValueError(f"class_weight={self.class_weight!r}; expected two positive numbers "
                                 "[w_hem, w_all]")
        return torch.tensor(weights, dtype=torch.float32)

    def _augmenter(self):
        if self.augment is True:
            from allkit.transforms import BatchAugment

            return BatchAugment()
        return self.augment or None

    # ---------------------------------------------------------------- checkpoint I/O
    def _resume_state(self, train, n_train: int) -> dict | None:
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs checkpoint_dir (where the interrupted run wrote last.pt)")
        if not path.is_file():
            warnings.warn(f"resume=True but there is no checkpoint at {path} yet: training from epoch 1",
                          stacklevel=3)
            return None
        state = load_checkpoint(path)
        saved, current = state["params"], self.get_params()
        saved = {**_RESULT_DEFAULTS, **saved}
        differ = [f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in _RESULT_PARAMS
                  if saved.get(k) != current[k]]
        if current["lr_schedule"] != "constant" and saved.get("epochs") != current["epochs"]:
            differ.append(f"epochs: checkpoint {saved.get('epochs')!r} vs now {current['epochs']!r} (the "
                          f"{current['lr_schedule']} schedule spans all epochs)")
        if differ:
            raise CheckpointError(f"cannot resume from {path}: it was trained with other settings ("
                                  + "; ".join(differ) + "). Use the same settings or a new checkpoint_dir")
        if state.get("n_train") != n_train:
            raise CheckpointError(f"cannot resume from {path}: it was trained on {state.get('n_train')} "
                                  f"images, this training set has {n_train}")
        if state["epoch"] > self.epochs:
            raise CheckpointError(f"{path} is at epoch {state['epoch']}, beyond epochs={self.epochs}; "
                                  f"pass epochs>={state['epoch']} or start a new checkpoint_dir")
        moved = [k for k in _PLATFORM_PARAMS if saved.get(k) != current[k]]
        if moved:
            warnings.warn(f"resuming {path} with different {', '.join(moved)}: the result will be close to, "
                          "not bit-identical with, an uninterrupted run", stacklevel=3)
        return state

    # ---------------------------------------------------------------- fit
    def fit(self, model: nn.Module, train, val=None, resume: bool = False) -> Trainer:
        """Train ``model`` in place on ``train`` (validating on ``val`` after each epoch); returns ``self``.

        The model stays on ``device_`` (channels-last when used) and is left in eval mode.
        ``resume=True`` continues from ``checkpoint_dir/last.pt`` (model, optimizer, history, best epoch)
        with the epoch after the last completed one; with no checkpoint yet it starts from epoch 1.
        Raises :class:`TrainingDivergedError` on a NaN/inf loss (weights restored to the last epoch end).
        """
        self._check_params()
        if self.keep_best and val is None:
            raise ValueError("keep_best=True needs a validation set: fit(model, train, val)")
        if len(train) == 0:
            raise ValueError("the training set is empty")
        device = select_device(self.device)
        if device.type == "cpu":
            tune_malloc()
            configure_threads()
        cl = use_channels_last(device, self.channels_last)
        amp_dtype = autocast_dtype(device, self.amp)
        _prepare_module(model, device, cl)
        optimizer = self._make_optimizer(model)
        scaler = make_grad_scaler(device, amp_dtype)
        weights = self._class_weights(train)
        self.class_weight_ = weights
        loss_weight = None if weights is None else weights.to(device)
        augmenter = self._augmenter()
        if isinstance(augmenter, nn.Module):
            augmenter.to(device)
        n_train = len(train)

        history: list[dict] = []
        best_epoch, best_loss, best_state = None, math.inf, None
        start = 1
        if resume:
            state = self._resume_state(train, n_train)
            if state is not None:
                try:
                    model.load_state_dict(state["model"])
                except RuntimeError as err:
                    raise CheckpointError(
                        f"{self.checkpoint_path} holds weights of another model: {err}") from err
                optimizer.load_state_dict(state["optimizer"])
                if scaler is not None and state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                history = list(state["history"])
                best_epoch, best_loss = state["best_epoch"], state["best_val_loss"]
                best_loss = math.inf if best_loss is None else best_loss
                best_state = state.get("best_model")
                if best_state is None and best_epoch == state["epoch"]:
                    best_state = _cpu_state(model)
                start = state["epoch"] + 1
        elif self.checkpoint_path is not None and self.checkpoint_path.exists():
            warnings.warn(f"overwriting the checkpoint {self.checkpoint_path} (pass resume=True to continue "
                          "it)", stacklevel=2)

        order = _EpochShuffle(n_train)
        loader = _loader(train, batch_size=self.batch_size, device=device, num_workers=self.num_workers,
                         sampler=order)
        n_batches = len(loader) if self.max_batches is None else min(self.max_batches, len(loader))
        self.device_ = device
        self.checkpoint_path_ = self.checkpoint_path

        for epoch in range(start, self.epochs + 1):
            good_state = _cpu_state(model)
            shuffle_seed, augment_seed, torch_seed = epoch_seeds(self.seed, epoch)
            order.set_seed(shuffle_seed)
            augment_gen = torch.Generator().manual_seed(augment_seed)
            torch.manual_seed(torch_seed)  # dropout, stochastic depth (CPU and CUDA)

            model.train()
            started = time.perf_counter()
            total_loss, correct, seen = 0.0, 0, 0
            bar = tqdm(itertools.islice(loader, n_batches), total=n_batches, unit="batch",
                       desc=f"Epoch {epoch}/{self.epochs}", disable=not self.progress, leave=True)
            for index, (images, labels) in enumerate(bar):
                if self.lr_schedule != "constant":
                    lr_now = self.lr_at((epoch - 1) * n_batches + index, self.epochs * n_batches)
                    for group in optimizer.param_groups:
                        group["lr"] = lr_now
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if augmenter is not None:
                    images = augmenter(images, generator=augment_gen)
                x = _model_input(images, self.normalize, cl)
                with _autocast(device, amp_dtype):
                    output = model(x)
                logits = _main_logits(output).float()
                loss = F.cross_entropy(logits, labels, weight=loss_weight, label_smoothing=self.label_smoothing)
                aux = _aux_logits(output)
                if aux is not None and self.aux_weight:
                    loss = loss + self.aux_weight * F.cross_entropy(aux.float(), labels, weight=loss_weight,
                                                                    label_smoothing=self.label_smoothing)
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    model.load_state_dict(good_state)
                    kept = self.checkpoint_path if (self.checkpoint_path and self.checkpoint_path.exists()
                                                    and epoch > 1) else None
                    lr = optimizer.param_groups[0]["lr"]
                    raise TrainingDivergedError(epoch, index + 1, value, lr, kept)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                n = labels.shape[0]
                total_loss += value * n
                correct += int((logits.detach().argmax(1) == labels).sum())
                seen += n
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
            bar.close()
            train_seconds = time.perf_counter() - started

            val_loss = val_acc = None
            if val is not None:
                result = self._evaluate(model, val, device, cl, limit=self.max_batches)
                val_loss, val_acc = result["loss"], result["accuracy"]
            record = {
                "epoch": epoch,
                "train_loss": total_loss / seen,
                "train_acc": correct / seen,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "seconds": time.perf_counter() - started,
                "train_seconds": train_seconds,
                "train_images": seen,
                "images_per_second": seen / train_seconds if train_seconds > 0 else float("nan"),
                "lr": float(optimizer.param_groups[0]["lr"]),
            }
            history.append(record)
            if val_loss is not None and val_loss < best_loss:
                best_epoch, best_loss = epoch, val_loss
                best_state = _cpu_state(model) if self.keep_best else None
            if self.progress and val is not None:
                tqdm.write(f"epoch {epoch}: train loss {record['train_loss']:.4f} "
                           f"acc {record['train_acc']:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f}")
            if self.checkpoint_path is not None:
                self._save(model, optimizer, scaler, epoch, history, best_epoch, best_loss,
                           best_state if best_epoch != epoch else None, n_train)

        last_epoch = history[-1]["epoch"] if history else None
        if self.keep_best and best_epoch is not None and best_epoch != last_epoch and best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.history_ = history
        self.best_epoch_ = best_epoch
        return self

    def _save(self, model, optimizer, scaler, epoch, history, best_epoch, best_loss, best_state, n_train):
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "history": history,
            "params": self.get_params(),
            "best_epoch": best_epoch,
            "best_val_loss": None if not math.isfinite(best_loss) else best_loss,
            "best_model": best_state if self.keep_best else None,
            # Every epoch reseeds from (seed, epoch): the seed is all the RNG state resumption needs.
            "rng": {"seed": int(self.seed), "scheme": "epoch_seeds(seed, epoch)", "next_epoch": epoch + 1},
            "n_train": n_train,
            "torch_version": str(torch.__version__),
        }
        _atomic_save(payload, self.checkpoint_path)

    # ---------------------------------------------------------------- evaluation
    def _eval_device(self, model: nn.Module) -> tuple[torch.device, bool]:
        device = getattr(self, "device_", None) or select_device(self.device)
        if device.type == "cpu":
            tune_malloc()
        cl = use_channels_last(device, self.channels_last)
        _prepare_module(model, device, cl)
        return device, cl

    def _outputs(self, model, dataset, device, cl, limit):
        def logits_fn(x):
            return _main_logits(model(x))

        was_training = model.training
        model.eval()
        try:
            yield from _iterate(logits_fn, dataset, batch_size=self.batch_size, device=device,
                                channels_last=cl, normalize=self.normalize,
                                amp_dtype=autocast_dtype(device, self.amp), num_workers=self.num_workers,
                                limit=limit, progress=self.progress, desc="Evaluating")
        finally:
            model.train(was_training)

    def _evaluate(self, model, dataset, device, cl, limit=None) -> dict:
        total, correct, n = 0.0, 0, 0
        for logits, labels in self._outputs(model, dataset, device, cl, limit):
            labels = labels.to(logits.device)
            logits = logits.float()
            total += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            n += labels.shape[0]
        if n == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        return {"loss": total / n, "accuracy": correct / n, "n": n}

    def evaluate(self, model: nn.Module, dataset) -> dict:
        """Mean (unweighted) cross-entropy and accuracy of ``model`` on ``dataset``: eval mode, no
        augmentation, ``torch.inference_mode``. Returns ``{"loss", "accuracy", "n"}``."""
        self._check_params()
        device, cl = self._eval_device(model)
        return self._evaluate(model, dataset, device, cl)

    def predict_proba(self, model: nn.Module, dataset) -> np.ndarray:
        """Softmax probabilities, shape ``(N, 2)``, columns ``[HEM, ALL]``, in dataset order."""
        self._check_params()
        device, cl = self._eval_device(model)
        chunks = [torch.softmax(logits.float(), dim=1).cpu()
                  for logits, _ in self._outputs(model, dataset, device, cl, None)]
        if not chunks:
            return np.zeros((0, 2))
        return torch.cat(chunks).numpy().astype(np.float64)


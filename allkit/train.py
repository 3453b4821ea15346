"""Fine-tuning with the paper's recipe: Adamax, learning rate 1e-3, batch 40, 5 epochs, cross-entropy.

::

    trainer = Trainer(checkpoint_dir="runs/b0").fit(model, train_ds, val_ds)   # the model trains in place
    trainer.history_                                                           # one dict per epoch

A batch is read from the uint8 cache in one go, moved to the device, augmented there
(:class:`allkit.transforms.BatchAugment`) and turned into float input. Every epoch's randomness (order,
augmentation, dropout) comes from ``(seed, epoch)`` alone, so a run resumed from epoch *k*'s checkpoint
ends with the weights of an uninterrupted one. Checkpoints hold tensors and plain values only and are
read with ``torch.load(weights_only=True)``.
"""

import dataclasses
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from allkit.constants import BATCH_SIZE, EPOCHS, LEARNING_RATE, SEED
from allkit.data import CellDataset, make_loader
from allkit.device import amp_dtype, autocast, select_device
from allkit.errors import ConfigError, ModelError
from allkit.files import save_torch
from allkit.inference import evaluate, model_layout, prepare
from allkit.transforms import BatchAugment, mean_std, to_model_input

CHECKPOINT = "last.pt"
OPTIMIZERS = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_PLATFORM = ("device", "amp", "progress", "checkpoint_dir")  # may differ on resume: they do not change weights


class TrainingDivergedError(ModelError):
    """The training loss became NaN or infinite; the weights were restored to the epoch's start."""


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int, int]:
    """Seeds of an epoch's shuffling, augmentation and dropout: a function of ``(seed, epoch)`` only."""
    return tuple(int(w) >> 1 for w in np.random.SeedSequence([seed % 2**63, epoch]).generate_state(3, np.uint64))


def train_one_epoch(
    model,
    loader,
    optimizer,
    loss_fn,
    *,
    device,
    normalize=True,
    augment=None,
    generator=None,
    scheduler=None,
    scaler=None,
    dtype=None,
) -> dict:
    """One pass over ``loader``: augment, forward, loss, backward, optimiser step. Loss and accuracy are
    summed on the device and read once at the end (no host-device sync per step on a GPU)."""
    model.train()
    before, started = {k: v.clone() for k, v in model.state_dict().items()}, time.perf_counter()
    total_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, generator=generator)  # random flips and rotation, drawn per cell
        x = model_layout(to_model_input(images, normalize), device)
        with autocast(device, dtype):
            output = model(x)
        logits, aux = output if isinstance(output, tuple) else (output, None)  # Inception-v3: (logits, aux)
        loss = loss_fn(logits.float(), labels)
        if aux is not None:
            loss = loss + 0.4 * loss_fn(aux.float(), labels)  # torchvision's weight for Inception's aux head
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # float16 on a GPU: scale the loss so that small gradients survive
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    seconds, mean_loss = time.perf_counter() - started, total_loss.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        model.load_state_dict(before)
        raise TrainingDivergedError(
            f"training diverged: the mean loss of the epoch was {mean_loss} (learning rate "
            f"{optimizer.param_groups[0]['lr']:g}); the weights are those from before the epoch. "
            "Try a 10x lower learning rate"
        )
    return {
        "train_loss": mean_loss,
        "train_acc": correct.item() / max(seen, 1),
        "train_images": seen,
        "seconds": seconds,
        "images_per_second": seen / seconds,
        "val_loss": None,
        "val_acc": None,
    }


@dataclasses.dataclass
class Trainer:
    """Fine-tunes a classifier on a :class:`allkit.data.CellDataset` (HEM = 0, ALL = 1); the defaults are
    the paper's recipe. ``augment``: ``True`` (the paper's flips and rotation), ``False`` or a module
    ``(batch, generator) → batch``. ``normalize``: ``True`` (ImageNet statistics), ``False`` ([0, 1], the
    paper's pipeline) or ``(mean, std)``. ``lr_schedule="cosine"``: a half cosine to 0 over all steps after
    a linear warm-up of ``warmup_epochs``. ``class_weight``: ``None``, ``"balanced"`` or ``[w_hem, w_all]``.
    ``keep_best``: end with the weights of the epoch with the lowest validation loss. ``checkpoint_dir``:
    ``last.pt`` after every epoch, which ``fit(..., resume=True)`` continues. ``max_batches``: per epoch.

    After ``fit``: ``history_`` (per epoch: ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc``, ``seconds``, ``images_per_second``, ``lr``) and ``best_epoch_`` (lowest validation loss).
    """

    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    optimizer: str = "adamax"
    seed: int = SEED
    augment: object = True
    normalize: object = True
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weight: object = None
    keep_best: bool = False
    max_batches: int | None = None
    checkpoint_dir: object = None
    device: str = "auto"
    amp: object = "auto"
    progress: bool = True

    def fit(self, model: nn.Module, train: CellDataset, val: CellDataset | None = None, resume=False) -> "Trainer":
        """Train ``model`` in place on ``train``, validating on ``val`` after every epoch. Returns ``self``."""
        device, steps = self._check(model, train, val)
        optimizer = OPTIMIZERS[self.optimizer](model.parameters(), lr=self.lr)  # the paper: Adamax, lr = 1e-3
        loss_fn = nn.CrossEntropyLoss(weight=self._class_weights(train, device), label_smoothing=self.label_smoothing)
        tools = self._step_tools(optimizer, device, steps)  # augmentation, learning-rate schedule, mixed precision
        best = self._resume(model, optimizer, tools, len(train)) if resume else self._start()
        for epoch in range(len(self.history_) + 1, self.epochs + 1):
            shuffle_seed, augment_seed, dropout_seed = epoch_seeds(self.seed, epoch)
            torch.manual_seed(dropout_seed)  # dropout and stochastic depth
            loader = make_loader(train, batch_size=self.batch_size, shuffle=True, seed=shuffle_seed, device=device)
            batches = tqdm(
                itertools.islice(loader, steps), total=steps, desc=f"Epoch {epoch}", disable=not self.progress
            )
            generator = torch.Generator(device).manual_seed(augment_seed)  # draws where the batch is: no sync
            record = train_one_epoch(model, batches, optimizer, loss_fn, generator=generator, **tools)
            if val is not None:
                scores = evaluate(model, val, normalize=self.normalize, amp=self.amp)
                record.update(val_loss=scores["loss"], val_acc=scores["accuracy"])
                best = self._remember(best, model, epoch, scores)
            self.history_.append({"epoch": epoch, **record, "lr": optimizer.param_groups[0]["lr"]})
            self._save(model, optimizer, tools, best, len(train))
        if self.keep_best and best["weights"] is not None:
            model.load_state_dict(best["weights"])
        model.eval()
        return self

    def _start(self) -> dict:
        self.history_, self.best_epoch_ = [], None
        return {"loss": math.inf, "weights": None}

    def _remember(self, best: dict, model: nn.Module, epoch: int, scores: dict) -> dict:
        """Track the epoch with the lowest validation loss (and its weights, with ``keep_best``)."""
        if self.progress:
            tqdm.write(f"epoch {epoch}: validation loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.3f}")
        if scores["loss"] >= best["loss"]:
            return best
        self.best_epoch_ = epoch
        weights = {k: v.cpu().clone() for k, v in model.state_dict().items()} if self.keep_best else None
        return {"loss": scores["loss"], "weights": weights}

    def _step_tools(self, optimizer, device: torch.device, steps: int) -> dict:
        dtype = amp_dtype(device, self.amp)
        return {
            "device": device,
            "normalize": self.normalize,
            "dtype": dtype,
            "augment": BatchAugment() if self.augment is True else self.augment or None,
            "scheduler": self._scheduler(optimizer, steps),
            "scaler": torch.amp.GradScaler(device.type) if dtype is torch.float16 else None,
        }

    def get_params(self) -> dict:
        """The settings as plain values (what a checkpoint records)."""
        return json.loads(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, default=repr))

    def _check(self, model: nn.Module, train: CellDataset, val) -> tuple[torch.device, int]:
        for name in ("epochs", "batch_size") + (("max_batches",) if self.max_batches is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}; expected a positive integer")
        problems = {
            "lr": not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0),
            "optimizer": self.optimizer not in OPTIMIZERS,
            "lr_schedule": self.lr_schedule not in ("constant", "cosine"),
            "warmup_epochs": not 0 <= self.warmup_epochs < self.epochs,
            "label_smoothing": not 0 <= self.label_smoothing < 1,
            "augment": not (self.augment in (True, False) or callable(self.augment)),
        }
        for name in (name for name, bad in problems.items() if bad):
            raise ConfigError(f"{name}={getattr(self, name)!r} is not accepted; see the Trainer's documentation")
        mean_std(self.normalize)
        if len(train) == 0 or (self.keep_best and val is None):
            raise ConfigError(
                "fit needs training cells" + (", and keep_best a validation set" if self.keep_best else "")
            )
        device = select_device(self.device)
        prepare(model, device)
        steps = math.ceil(len(train) / self.batch_size)
        return device, min(steps, self.max_batches or steps)

    def _class_weights(self, train: CellDataset, device) -> torch.Tensor | None:
        if self.class_weight is None:
            return None
        counts = np.bincount(train.labels.numpy(), minlength=2)
        try:
            weights = (
                len(train) / (2 * counts) if self.class_weight == "balanced" else np.asarray(self.class_weight, float)
            )
        except (TypeError, ValueError):
            weights = np.zeros(0)
        if weights.shape != (2,) or not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ConfigError(
                f"class_weight={self.class_weight!r}; expected 'balanced' (needs both classes in the "
                "training cells) or two positive numbers [w_hem, w_all]"
            )
        return torch.tensor(weights, dtype=torch.float32, device=device)

    def _scheduler(self, optimizer, steps_per_epoch: int):
        if self.lr_schedule == "constant":
            return None
        total, warm = self.epochs * steps_per_epoch, round(self.warmup_epochs * steps_per_epoch)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
        if warm == 0:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warm, total_iters=warm)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / CHECKPOINT

    def _save(self, model, optimizer, tools: dict, best: dict, n_train: int) -> None:
        if self.checkpoint_path is None:
            return
        parts = {"model": model, "optimizer": optimizer, "scheduler": tools["scheduler"], "scaler": tools["scaler"]}
        payload = {name: part.state_dict() if part is not None else None for name, part in parts.items()}
        payload.update(
            format="allkit-checkpoint",
            version=2,
            params=self.get_params(),
            n_train=n_train,
            history=self.history_,
            best_epoch=self.best_epoch_,
            best=best,
        )
        save_torch(payload, self.checkpoint_path)

    def _resume(self, model, optimizer, tools: dict, n_train: int) -> dict:
        if self.checkpoint_path is None:
            raise ConfigError("resume=True needs checkpoint_dir (where the interrupted run wrote last.pt)")
        if not self.checkpoint_path.is_file():
            warnings.warn(
                f"resume=True but {self.checkpoint_path} does not exist yet: starting at epoch 1", stacklevel=3
            )
            return self._start()
        state, now = load_checkpoint(self.checkpoint_path), self.get_params()
        changed = [
            f"{k} {state['params'].get(k)!r} → {v!r}"
            for k, v in now.items()
            if k not in _PLATFORM and state["params"].get(k) != v
        ]
        resumable = self.lr_schedule == "constant" and len(state["history"]) <= self.epochs
        changed = [c for c in changed if not (resumable and c.startswith("epochs "))]
        if state["n_train"] != n_train:
            changed.append(f"training cells {state['n_train']} → {n_train}")
        if changed:
            raise ModelError(
                f"cannot resume from {self.checkpoint_path}: it was trained with other settings "
                f"({'; '.join(changed)}); use the same settings or a new checkpoint_dir"
            )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ModelError(
                f"{self.checkpoint_path} holds another model's weights: {str(err).splitlines()[0]}"
            ) from err
        for part, name in ((optimizer, "optimizer"), (tools["scheduler"], "scheduler"), (tools["scaler"], "scaler")):
            if part is not None and state[name] is not None:
                part.load_state_dict(state[name])
        self.history_, self.best_epoch_ = state["history"], state["best_epoch"]
        return state["best"]


def load_checkpoint(path) -> dict:
    """A trainer checkpoint (the file, or the folder holding ``last.pt``), read with ``weights_only=True``."""
    path = Path(path) / CHECKPOINT if Path(path).is_dir() else Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated, or a pickle holding objects
        raise ModelError(
            f"cannot read the checkpoint {path}: {str(err).splitlines()[0] if str(err) else err!r}"
        ) from err
    if not isinstance(state, dict) or (state.get("format"), state.get("version")) != ("allkit-checkpoint", 2):
        raise ModelError(f"{path} is not an allkit checkpoint of this version (format allkit-checkpoint, version 2)")
    return state

"""The fine-tune a configuration asks for: the paper's loop (:class:`allkit.train.Trainer`) with the
configuration's optimiser, schedule, augmentation, sampling and frozen layers."""

import torch

from allkit.data import CellDataset
from allkit.study.across import StainAugment, balanced_frame, freeze_early_layers
from allkit.study.config import Config
from allkit.study.prepare import RunData
from allkit.train import Trainer
from allkit.transforms import BatchAugment


def augmentation(config: Config):
    """The training augmentation the configuration asks for (``True``: the paper's flips and rotation)."""
    if config.flip_probability == BatchAugment().p_hflip and config.rotation_degrees == BatchAugment().degrees:
        geometric = True
    else:
        geometric = BatchAugment(
            p_hflip=config.flip_probability, p_vflip=config.flip_probability, degrees=config.rotation_degrees
        )
    if not (config.hed_jitter or config.color_jitter or config.grayscale):
        return geometric
    return StainAugment(
        BatchAugment() if geometric is True else geometric,
        hed=config.hed_jitter,
        color=config.color_jitter,
        grayscale=config.grayscale,
    )


def finetune(data: RunData, model: torch.nn.Module, *, checkpoint_dir=None, progress=True) -> Trainer:
    """Fine-tune ``model`` on ``data``'s training cells as its configuration says (validating every epoch)."""
    config, train = data.config, data.datasets["train"]
    if config.balanced_sampling:
        train = CellDataset(train.cache, balanced_frame(train.frame, config.training_seed))
    if config.freeze:
        freeze_early_layers(model, config.freeze)
    trainer = Trainer(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        seed=config.training_seed,
        augment=augmentation(config),
        normalize=data.normalize,
        lr_schedule=config.lr_schedule,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        class_weight=config.class_weight,
        keep_best=config.keep_best and "val" in data.datasets,
        max_batches=config.max_batches,
        checkpoint_dir=checkpoint_dir,
        device=data.device,
        progress=progress,
    )
    return trainer.fit(model, train, data.datasets.get("val"))

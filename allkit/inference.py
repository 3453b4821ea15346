"""Running a network over cells: its outputs, its class probabilities, its loss. The evaluation
preprocessing only (cached pixels, normalisation; no augmentation), in eval mode, without gradients."""

import itertools

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from allkit.constants import BATCH_SIZE
from allkit.data import CellDataset, make_loader
from allkit.device import amp_dtype, autocast, channels_last, select_device
from allkit.errors import ConfigError
from allkit.transforms import dihedral, mean_std, to_model_input

GPU_BATCH_SIZE = 256


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in its memory layout (and cuDNN allowed to pick its fastest kernels)."""
    torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark or device.type == "cuda"
    return model.to(device, memory_format=torch.channels_last if channels_last(device) else torch.preserve_format)


def model_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last(device) else torch.contiguous_format)


def predict(
    module: nn.Module,
    dataset: CellDataset,
    *,
    batch_size: int | None = None,
    device=None,
    normalize=True,
    view: int = 0,
    amp="auto",
    progress: bool = False,
    desc: str = "Predicting",
) -> np.ndarray:
    """``module``'s output for every cell of ``dataset``, in order, as float32 ``(N, D)``: the evaluation
    preprocessing only (cached pixels, one of the 8 dihedral ``view``s, normalisation), eval mode,
    ``torch.inference_mode``, autocast on a GPU. ``device=None`` runs where the module is. ``batch_size``
    (no effect on the result): 256 on a GPU, where larger batches keep it busy, else the paper's 40."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r}; expected a positive integer")
    if len(dataset) == 0:
        raise ConfigError("the dataset is empty (0 cells); nothing to predict")
    weight = next(itertools.chain(module.parameters(), module.buffers()), None)
    device = (
        select_device(device) if device is not None else (weight.device if weight is not None else torch.device("cpu"))
    )
    dtype, stats, was_training = amp_dtype(device, amp), mean_std(normalize), module.training
    batch_size = batch_size or (GPU_BATCH_SIZE if device.type == "cuda" else BATCH_SIZE)
    prepare(module, device).eval()
    outputs = []
    try:
        with torch.inference_mode():
            for images, _ in tqdm(
                make_loader(dataset, batch_size=batch_size, device=device),
                desc=desc,
                unit="batch",
                disable=not progress,
                leave=False,
            ):
                x = to_model_input(dihedral(images.to(device, non_blocking=True), view), stats)
                with autocast(device, dtype):
                    out = module(model_layout(x, device))
                outputs.append(out.float().flatten(1).cpu())
    finally:
        module.train(was_training)
    return torch.cat(outputs).numpy()


def predict_proba(model: nn.Module, dataset: CellDataset, *, tta: bool = False, **kwargs) -> np.ndarray:
    """The CNN alone: softmax of its head, float32 ``(N, n_classes)`` (``[P(HEM), P(ALL)]``); with ``tta``
    the mean over the 8 dihedral views of each cell. ``kwargs`` go to :func:`predict`."""
    views = range(8) if tta else [0]
    probs = [torch.softmax(torch.from_numpy(predict(model, dataset, view=v, **kwargs)).double(), 1) for v in views]
    return torch.stack(probs).mean(0).numpy().astype(np.float32)


def evaluate(model: nn.Module, dataset: CellDataset, **kwargs) -> dict:
    """Mean cross-entropy (unweighted) and accuracy of ``model`` on ``dataset``, in eval mode."""
    logits = torch.from_numpy(predict(model, dataset, **kwargs))
    loss = nn.functional.cross_entropy(logits, dataset.labels, reduction="mean")
    return {
        "loss": float(loss),
        "accuracy": float((logits.argmax(1) == dataset.labels).float().mean()),
        "n": len(dataset),
    }

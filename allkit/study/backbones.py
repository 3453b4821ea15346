"""The paper's Table 1, measured: every backbone fine-tuned with the same recipe, then the same hybrid.

    from allkit.study.backbones import compare_backbones, parameter_table

    parameter_table()                                   # sizes: computed next to the paper's figures
    table = compare_backbones("ci", data_root)          # one row per backbone, cached per backbone

Each backbone gets the profile's recipe (split, seed, epochs, batch, Adamax, XGBoost eta) so that the
rows differ only by the architecture and its ImageNet weights. A backbone whose ImageNet weights cannot
be had here (no internet, no cached file) gets a row saying so and no results: nothing is made up. The
offline EfficientNet-Lite0 always has its packaged weights.

Image size: the profile's ``image_size`` for every backbone, except in the ``paper`` profile, where each
backbone gets its own native input size (``get_backbone(name).input_size``: 299 for Inception-v3), and except
where an architecture cannot take the profile's size at all (Inception-v3's auxiliary classifier needs
299 px in training): the ``note`` column says when that happened.

Each row is a run of the store (:func:`allkit.study.store.run`): the profile's own backbone is the chapter's
main run, trained once, and a rerun opens what is done. A backbone whose weights are unavailable trains nothing
(the next run, perhaps with internet, tries again).
"""

import math
import os
from collections.abc import Iterable
from dataclasses import replace

import pandas as pd
import torch

from allkit.errors import ModelError
from allkit.models import BACKBONES, build_model, get_backbone, head
from allkit.study import paper
from allkit.study.config import Config, get_config
from allkit.study.store import run

__all__ = [
    "COLUMNS",
    "COMPARED",
    "PAPER_PARAMS",
    "UNAVAILABLE",
    "backbone_image_size",
    "compare_backbones",
    "parameter_table",
]

#: The paper's comparison (Table 1) plus the offline backbone this book can always run.
COMPARED = ("vgg16", "resnet18", "inception_v3", "efficientnet_b0", "efficientnet_lite0")
#: Parameter counts the paper quotes (1000-class ImageNet head) and whether each is exact: for VGG16 it says
#: only "over 128,000,000", shown but not subtracted from.
PAPER_PARAMS = paper.PARAMETER_COUNTS
UNAVAILABLE = "ImageNet weights unavailable here (no internet)"
COMPUTED = "computed"
COLUMNS = [
    "backbone",
    "status",
    "weights",
    "params",
    "image_size",
    "cnn_accuracy",
    "hybrid_accuracy",
    "low",
    "high",
    "hybrid_weighted_f1",
    "test_cells",
    "test_subjects",
    "seconds",
    "note",
]
#: Smallest input an architecture trains at (Inception-v3's auxiliary head needs a 17x17 Mixed_6e map).
MIN_TRAIN_SIZE = {"inception_v3": 299}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shapes_only(name: str, num_classes: int) -> torch.nn.Module:
    """The architecture on PyTorch's meta device: shapes only, nothing allocated or downloaded."""
    with torch.device("meta"):
        return build_model(name, None, num_classes=num_classes)


def parameter_table(names: Iterable[str] | None = None) -> pd.DataFrame:
    """Parameter counts next to the figures the paper quotes, one row per backbone (default: the paper's
    four first, then the others of :data:`allkit.models.BACKBONES`).

    ``params_imagenet_head``: with the 1000-class head, the figure papers quote (torchvision's weight
    metadata; counted on the built model for EfficientNet-Lite0); ``params_2_classes``: with the new
    HEM/ALL head; ``paper_params`` for display (VGG16's is a lower bound: no difference computed). In the default
    table a backbone that cannot be built here (Lite0 without its optional package) keeps a row saying why.
    """
    rows = []
    for name in names if names is not None else [*PAPER_PARAMS, *(n for n in BACKBONES if n not in PAPER_PARAMS)]:
        backbone = get_backbone(name)
        try:
            model, imagenet = _shapes_only(backbone.name, 2), backbone.num_params
        except ModelError as err:
            if names is not None:
                raise
            rows.append({"backbone": backbone.name, "input_size": backbone.input_size, "note": str(err)})
            continue
        paper, exact = PAPER_PARAMS.get(backbone.name, (None, True))
        note = "" if exact else "the paper says only 'over' this figure"
        if backbone.name == "inception_v3":
            aux = _count(_shapes_only(backbone.name, 1000).AuxLogits)
            note = f"includes the auxiliary classifier ({aux:,}); without it {imagenet - aux:,}"
        rows.append(
            {
                "backbone": backbone.name,
                "params_imagenet_head": imagenet,
                "params_2_classes": _count(model),
                "paper_params": paper,
                "computed_minus_paper": imagenet - paper if paper is not None and exact else None,
                "input_size": backbone.input_size,
                "feature_dim": head(model, backbone).in_features,
                "note": note,
            }
        )
    table = pd.DataFrame(rows).set_index("backbone")
    counts = ["params_imagenet_head", "params_2_classes", "paper_params", "computed_minus_paper"]
    return table.astype(dict.fromkeys(counts, "Int64"))


def backbone_image_size(config: Config, name: str) -> tuple[int, str]:
    """The image size ``name`` is trained at under ``config``, and a note when it is not the configuration's."""
    backbone = get_backbone(name)
    if config.name == "paper":
        size = backbone.input_size
        note = f"{size} px: the backbone's native input size (paper profile)" if size != config.image_size else ""
    else:
        size, note = config.image_size, ""
    minimum = MIN_TRAIN_SIZE.get(backbone.name)
    if minimum is not None and size < minimum:
        note = (
            f"{minimum} px instead of the profile's {size}: {backbone.name} cannot be trained on smaller "
            "images (its auxiliary classifier needs at least 299 px)"
        )
        size = minimum
    return size, note


def _params(name: str) -> int:
    return _count(_shapes_only(name, 2))


def _weights_label(name: str, weights: str | None) -> str:
    key = str(weights).strip().lower() if weights is not None else None
    if key is None:
        return "random initialisation"
    if key in ("imagenet", "offline"):
        return "ImageNet (packaged file, offline)" if get_backbone(name).offline else "ImageNet (torchvision)"
    return str(weights)


def compare_backbones(
    config: Config | str | None = None,
    data_root: str | os.PathLike | None = None,
    names: Iterable[str] = COMPARED,
    weights: str | None = "imagenet",
    progress: bool = True,
    *,
    runs: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """One row per backbone: fine-tuned CNN accuracy and hybrid accuracy (with its 95% subject-bootstrap
    interval) on the configuration's test part, or the reason there is none.

    Args:
        config: a :class:`~allkit.study.config.Config` or a preset's name (``ALLKIT_PROFILE``, else ``sample``).
        data_root: the C-NMC folder (``ALLKIT_DATA``, ... as :func:`allkit.study.workspace.data_root`).
        names: backbones of :data:`allkit.models.BACKBONES`.
        weights: ``"imagenet"`` (torchvision's download; the packaged file for ``efficientnet_lite0``).
        progress: progress bars while caching, training and extracting features.
        runs: the run store (default :func:`allkit.study.workspace.runs_dir`).

    Returns:
        pandas.DataFrame with the columns :data:`COLUMNS`; ``status`` is ``"computed"`` or
        :data:`UNAVAILABLE`, ``params`` the 2-class parameter count (from the architecture, always given),
        ``low``/``high`` the hybrid accuracy's interval, ``seconds`` the time to fine-tune.
    """
    config = config if isinstance(config, Config) else get_config(config)
    rows = []
    for name in names:
        name = get_backbone(name).name
        size, note = backbone_image_size(config, name)
        row = dict.fromkeys(COLUMNS, math.nan)
        row.update(backbone=name, weights=_weights_label(name, weights), params=_params(name), image_size=size)
        # No fallback: a row is this backbone or says it could not be had
        chosen = replace(config, backbone=name, weights=weights, fallback_backbone=None, image_size=size)
        try:
            with torch.random.fork_rng(devices=[]):  # the weights alone first: no data work for nothing
                build_model(name, weights)
        except ModelError as err:
            if progress:
                print(f"{name}: {UNAVAILABLE}")
            rows.append({**row, "status": UNAVAILABLE, "note": f"{note}; {err}" if note else str(err)})
            continue
        done = run(chosen, data_root, runs=runs, progress=progress)
        metrics, ci = done.metrics, done.metrics["hybrid"]["ci"]["accuracy"]
        test = done.card["counts"]["test"]
        row.update(
            status=COMPUTED,
            cnn_accuracy=metrics["cnn"]["accuracy"],
            hybrid_accuracy=metrics["hybrid"]["accuracy"],
            low=ci["low"],
            high=ci["high"],
            hybrid_weighted_f1=metrics["hybrid"]["weighted_f1"],
            test_cells=test["cells"],
            test_subjects=test["subjects"],
            seconds=done.meta["seconds"]["finetune"],
            note=note,
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)

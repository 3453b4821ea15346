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

Results are cached as JSON, one file per backbone, in ``out`` (default ``runs/<profile>-backbones``),
keyed by the profile, data, backbone, weights and size: a rerun reuses them. Rows whose weights were
unavailable are not cached (the next run, perhaps with internet, tries again).
"""

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch

from allkit.errors import ModelError
from allkit.files import write_json
from allkit.inference import predict_proba
from allkit.models import BACKBONES, build_model, get_backbone, head
from allkit.study import paper, workspace
from allkit.study.profiles import Profile, get_profile
from allkit.study.run import evaluate_predictions, finetune, fit_hybrid, prepare
from allkit.study.workspace import test_data_root

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
_CACHE_VERSION = 2  # 2: the test part (ALLKIT_TEST_DATA) is part of the key


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


def backbone_image_size(profile: Profile, name: str) -> tuple[int, str]:
    """The image size ``name`` is trained at under ``profile``, and a note when it is not the profile's."""
    backbone = get_backbone(name)
    if profile.name == "paper":
        size = backbone.input_size
        note = f"{size} px: the backbone's native input size (paper profile)" if size != profile.image_size else ""
    else:
        size, note = profile.image_size, ""
    minimum = MIN_TRAIN_SIZE.get(backbone.name)
    if minimum is not None and size < minimum:
        note = (
            f"{minimum} px instead of the profile's {size}: {backbone.name} cannot be trained on smaller "
            "images (its auxiliary classifier needs at least 299 px)"
        )
        size = minimum
    return size, note


def _cache_key(profile: Profile, data: str, name: str, weights: str | None, size: int) -> dict:
    return {
        "version": _CACHE_VERSION,
        "profile": profile.to_dict(),
        "data": data,
        "test_data": None if test_data_root() is None else str(test_data_root()),
        "backbone": name,
        "weights": weights,
        "image_size": size,
    }


def _read_cache(path: Path, key: dict) -> dict | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("row") if saved.get("key") == key else None


def _params(name: str) -> int:
    return _count(_shapes_only(name, 2))


def _empty_row(name: str, status: str, weights: str | None, size: int, note: str) -> dict:
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(
        backbone=name,
        status=status,
        weights=_weights_label(name, weights),
        params=_params(name),
        image_size=size,
        note=note,
    )
    return row


def _weights_label(name: str, weights: str | None) -> str:
    key = str(weights).strip().lower() if weights is not None else None
    if key is None:
        return "random initialisation"
    if key in ("imagenet", "offline"):
        return "ImageNet (packaged file, offline)" if get_backbone(name).offline else "ImageNet (torchvision)"
    return str(weights)


def _row_from_metrics(name: str, metrics: dict, seconds: float, note: str) -> dict:
    card, hybrid = metrics["run_card"], metrics["hybrid"]
    ci = hybrid["ci"]["accuracy"]
    test = card["counts"]["test"]
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(
        backbone=name,
        status=COMPUTED,
        weights=_weights_label(name, card["weights"]),
        params=_params(name),
        image_size=card["image_size"],
        cnn_accuracy=metrics["cnn"]["accuracy"],
        hybrid_accuracy=hybrid["accuracy"],
        low=ci["low"],
        high=ci["high"],
        hybrid_weighted_f1=hybrid["weighted_f1"],
        test_cells=test["cells"],
        test_subjects=test["subjects"],
        seconds=seconds,
        note=note,
    )
    return row


def _matching_run(runs: Sequence, profile: Profile, data: str, name: str, size: int):
    """A finished run that is exactly this row's experiment (same profile, data, backbone and size)."""
    for run in runs:
        card = run.card
        if (
            card["backbone"] == name
            and card["data"] == data
            and card["image_size"] == size
            and card.get("test_data") == (None if test_data_root() is None else str(test_data_root()))
            and run.metrics["profile"] == profile.to_dict()
        ):
            return run
    return None


def _json_number(value):
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


class _Unavailable(Exception):
    """The backbone's weights cannot be had here."""


def _train_one(profile: Profile, data, name: str, weights: str | None, size: int, progress: bool):
    """Fine-tune ``name`` with the profile's recipe at ``size`` and fit the hybrid; the metrics dict."""
    sized = profile.with_overrides(image_size=size)
    try:  # the weights alone first (no data work for nothing); a download lands in torch's cache for prepare
        with torch.random.fork_rng(devices=[]):
            build_model(name, weights)
    except ModelError as err:  # the weights cannot be had: no download, no cached file, no offline package
        raise _Unavailable(str(err)) from err
    if progress:
        print(f"{name}: fine-tuning at {size} px, then XGBoost ...")
    prepared, model = prepare(sized, data, backbone=name, weights=weights, progress=progress)
    trainer = finetune(prepared, model, progress=progress)
    test = prepared.datasets["test"]
    cnn_proba = predict_proba(
        model,
        test,
        batch_size=sized.batch_size,
        normalize=prepared.normalize,
        device=prepared.device,
        progress=progress,
    )
    hybrid = fit_hybrid(prepared, model, progress=progress)
    return {
        "run_card": prepared.card(),
        "history": trainer.history_,
        "cnn": evaluate_predictions(test.frame, cnn_proba, n_boot=sized.n_boot, seed=sized.seed),
        "hybrid": evaluate_predictions(test.frame, hybrid.predict_proba(test), n_boot=sized.n_boot, seed=sized.seed),
    }


def compare_backbones(
    profile: Profile | str | None = None,
    data_root: str | os.PathLike | None = None,
    names: Iterable[str] = COMPARED,
    weights: str | None = "imagenet",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    runs: Sequence = (),
) -> pd.DataFrame:
    """One row per backbone: fine-tuned CNN accuracy and hybrid accuracy (with its 95% subject-bootstrap
    interval) on the profile's test split, or the reason there is none.

    Args:
        profile: a :class:`~allkit.study.profiles.Profile` or its name (``ALLKIT_PROFILE``, else ``sample``).
        data_root: the C-NMC folder (``ALLKIT_DATA``, ... as :func:`allkit.study.workspace.data_root`).
        names: backbones of :data:`allkit.models.BACKBONES`.
        weights: ``"imagenet"`` (torchvision's download; the packaged file for ``efficientnet_lite0``).
        out: cache folder (default ``runs/<profile>-backbones``, or ``$ALLKIT_RUNS/<profile>-backbones``).
        progress: progress bars while caching, training and extracting features.
        runs: finished runs (e.g. ``ctx.run()``) reused for the backbone they trained when their profile,
            data and image size are this comparison's: the same experiment is not trained twice.

    Returns:
        pandas.DataFrame with the columns :data:`COLUMNS`; ``status`` is ``"computed"`` or
        :data:`UNAVAILABLE`, ``params`` the 2-class parameter count (from the architecture, always given),
        ``low``/``high`` the hybrid accuracy's interval, ``seconds`` the time to fine-tune and fit.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    root, _ = workspace.data_root(data_root)
    data = str(Path(root))
    out = Path(out) if out is not None else workspace.runs_dir() / f"{profile.name}-backbones"
    rows = []
    for name in names:
        name = get_backbone(name).name
        size, note = backbone_image_size(profile, name)
        key = _cache_key(profile, data, name, weights, size)
        path = out / f"{name}.json"
        row = _read_cache(path, key)
        if row is not None:
            if progress:
                print(f"{name}: reusing {path.parent.name}/{path.name}")
            rows.append(row)
            continue
        started = time.perf_counter()
        run = _matching_run(runs, profile, data, name, size)
        if run is not None:
            if progress:
                print(f"{name}: taken from the finished run in runs/{run.out.name}")
            seconds = run.metrics.get("seconds", {})
            row = _row_from_metrics(
                name, run.metrics, seconds.get("finetune", math.nan) + seconds.get("hybrid", math.nan), note
            )
        else:
            try:
                metrics = _train_one(profile, data, name, weights, size, progress)
            except _Unavailable as err:
                if progress:
                    print(f"{name}: {UNAVAILABLE}")
                rows.append(_empty_row(name, UNAVAILABLE, weights, size, f"{note}; {err}" if note else str(err)))
                continue
            row = _row_from_metrics(name, metrics, time.perf_counter() - started, note)
        write_json(path, {"key": key, "row": row}, default=_json_number)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)

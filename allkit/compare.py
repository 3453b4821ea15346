"""The paper's Table 1, measured: every backbone fine-tuned with the same recipe, then the same hybrid.

    from allkit.compare import compare_backbones

    table = compare_backbones("ci", data_root)          # one row per backbone, cached per backbone

Each backbone gets the profile's recipe (split, seed, epochs, batch, Adamax, XGBoost eta) so that the
rows differ only by the architecture and its ImageNet weights. A backbone whose ImageNet weights cannot
be had here (no internet, no cached file) gets a row saying so and no results: nothing is made up. The
offline EfficientNet-Lite0 always has its packaged weights.

Image size: the profile's ``image_size`` for every backbone, except in the ``paper`` profile, where each
backbone gets its own native input size (``get_spec(name).input_size``: 299 for Inception-v3), and except
where an architecture cannot take the profile's size at all (Inception-v3's auxiliary classifier needs
299 px in training): the ``note`` column says when that happened.

Results are cached as JSON, one file per backbone, in ``out`` (default ``runs/<profile>-backbones``),
keyed by the profile, data, backbone, weights and size: a rerun reuses them. Rows whose weights were
unavailable are not cached (the next run, perhaps with internet, tries again).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch

from allkit.errors import ModelError
from allkit.profiles import Profile, get_profile

__all__ = ["BACKBONES", "COLUMNS", "UNAVAILABLE", "backbone_image_size", "compare_backbones"]

#: The paper's comparison (Table 1) plus the offline backbone this book can always run.
BACKBONES = ("vgg16", "resnet18", "inception_v3", "efficientnet_b0", "efficientnet_lite0")
UNAVAILABLE = "ImageNet weights unavailable here (no internet)"
COMPUTED = "computed"
COLUMNS = ["backbone", "status", "weights", "params", "image_size", "cnn_accuracy", "hybrid_accuracy",
           "low", "high", "hybrid_weighted_f1", "test_cells", "test_subjects", "seconds", "note"]
#: Smallest input an architecture trains at (Inception-v3's auxiliary head needs a 17x17 Mixed_6e map).
MIN_TRAIN_SIZE = {"inception_v3": 299}
_CACHE_VERSION = 1


def backbone_image_size(profile: Profile, name: str) -> tuple[int, str]:
    """The image size ``name`` is trained at under ``profile``, and a note when it is not the profile's."""
    from allkit.models import get_spec

    spec = get_spec(name)
    if profile.name == "paper":
        size = spec.input_size
        note = f"{size} px: the backbone's native input size (paper profile)" if size != profile.image_size else ""
    else:
        size, note = profile.image_size, ""
    minimum = MIN_TRAIN_SIZE.get(spec.name)
    if minimum is not None and size < minimum:
        note = (f"{minimum} px instead of the profile's {size}: {spec.name} cannot be trained on smaller "
                "images (its auxiliary classifier needs at least 299 px)")
        size = minimum
    return size, note


def _cache_key(profile: Profile, data: str, name: str, weights: str | None, size: int) -> dict:
    return {"version": _CACHE_VERSION, "profile": profile.to_dict(), "data": data, "backbone": name,
            "weights": weights, "image_size": size}


def _read_cache(path: Path, key: dict) -> dict | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("row") if saved.get("key") == key else None


def _params(name: str) -> int:
    from allkit.models import parameter_table

    return int(parameter_table([name]).iloc[0]["params_2_classes"])


def _empty_row(name: str, status: str, weights: str | None, size: int, note: str) -> dict:
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(backbone=name, status=status, weights=_weights_label(name, weights), params=_params(name),
               image_size=size, note=note)
    return row


def _weights_label(name: str, weights: str | None) -> str:
    from allkit.models import get_spec

    key = str(weights).strip().lower() if weights is not None else None
    if key is None:
        return "random initialisation"
    if key in ("imagenet", "offline"):
        return "ImageNet (packaged file, offline)" if get_spec(name).offline else "ImageNet (torchvision)"
    return str(weights)


def _row_from_metrics(name: str, metrics: dict, seconds: float, note: str) -> dict:
    card, hybrid = metrics["run_card"], metrics["hybrid"]
    ci = hybrid["ci"]["accuracy"]
    test = card["counts"]["test"]
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(backbone=name, status=COMPUTED, weights=_weights_label(name, card["weights"]), params=_params(name),
               image_size=card["image_size"], cnn_accuracy=metrics["cnn"]["accuracy"],
               hybrid_accuracy=hybrid["accuracy"], low=ci["low"], high=ci["high"],
               hybrid_weighted_f1=hybrid["weighted_f1"], test_cells=test["cells"], test_subjects=test["subjects"],
               seconds=seconds, note=note)
    return row


def _matching_run(runs: Sequence, profile: Profile, data: str, name: str, size: int):
    """A finished run that is exactly this row's experiment (same profile, data, backbone and size)."""
    for run in runs:
        card = run.card
        if (card["backbone"] == name and card["data"] == data and card["image_size"] == size
                and run.metrics["profile"] == profile.to_dict()):
            return run
    return None


class _Unavailable(Exception):
    """The backbone's weights cannot be had here."""


def _train_one(profile: Profile, data, name: str, weights: str | None, size: int, progress: bool):
    """Fine-tune ``name`` with the profile's recipe at ``size`` and fit the hybrid; the metrics dict."""
    from allkit.hybrid import cnn_predict_proba
    from allkit.models import build_model
    from allkit.pipeline import evaluate_predictions, finetune, fit_hybrid, prepare

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
    cnn_proba = cnn_predict_proba(model, test, batch_size=sized.batch_size, normalize=prepared.normalize,
                                  device=prepared.device, progress=progress)
    hybrid = fit_hybrid(prepared, model, progress=progress)
    return {
        "run_card": prepared.card(),
        "history": trainer.history_,
        "cnn": evaluate_predictions(test.frame, cnn_proba, n_boot=sized.n_boot, seed=sized.seed),
        "hybrid": evaluate_predictions(test.frame, hybrid.predict_proba(test), n_boot=sized.n_boot,
                                       seed=sized.seed),
    }


def compare_backbones(profile: Profile | str | None = None, data_root: str | os.PathLike | None = None,
                      names: Iterable[str] = BACKBONES, weights: str | None = "imagenet",
                      out: str | os.PathLike | None = None, progress: bool = True, *,
                      runs: Sequence = ()) -> pd.DataFrame:
    """One row per backbone: fine-tuned CNN accuracy and hybrid accuracy (with its 95% subject-bootstrap
    interval) on the profile's test split, or the reason there is none.

    Args:
        profile: a :class:`~allkit.profiles.Profile` or its name (``ALLKIT_PROFILE``, else ``sample``).
        data_root: the C-NMC folder (``ALLKIT_DATA``, ... as :func:`allkit.data.resolve_data_root`).
        names: backbones from :func:`allkit.models.list_backbones`.
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
    from allkit.data import resolve_data_root
    from allkit.models import get_spec
    from allkit.pipeline import RUNS_DIR, _write_json_atomic

    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    root, _ = resolve_data_root(data_root)
    data = str(Path(root))
    if out is None:
        runs_dir = Path(os.environ["ALLKIT_RUNS"]) if os.environ.get("ALLKIT_RUNS") else RUNS_DIR
        out = runs_dir / f"{profile.name}-backbones"
    out = Path(out)
    rows = []
    for name in names:
        name = get_spec(name).name
        size, note = backbone_image_size(profile, name)
        key = _cache_key(profile, data, name, weights, size)
        path = out / f"{name}.json"
        row = _read_cache(path, key)
        if row is not None:
            if progress:
                print(f"{name}: reusing {path}")
            rows.append(row)
            continue
        started = time.perf_counter()
        run = _matching_run(runs, profile, data, name, size)
        if run is not None:
            if progress:
                print(f"{name}: taken from the finished run in {run.out}")
            seconds = run.metrics.get("seconds", {})
            row = _row_from_metrics(name, run.metrics, seconds.get("finetune", math.nan)
                                    + seconds.get("hybrid", math.nan), note)
        else:
            try:
                metrics = _train_one(profile, data, name, weights, size, progress)
            except _Unavailable as err:
                if progress:
                    print(f"{name}: {UNAVAILABLE}")
                rows.append(_empty_row(name, UNAVAILABLE, weights, size, f"{note}; {err}" if note else str(err)))
                continue
            row = _row_from_metrics(name, metrics, time.perf_counter() - started, note)
        _write_json_atomic(path, {"key": key, "row": row})
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)

"""The paper's hybrid: a (fine-tuned) CNN as a frozen feature extractor, XGBoost as the classifier.

The paper's hybrid: the fine-tuned EfficientNet-B0 turns every cell into its 1280-d pooled
embedding (the input of the classification head) and an XGBoost classifier with learning rate
(``eta``) 0.35 is trained on those vectors; the paper reports 0.81 accuracy for the CNN alone and 0.85
for the hybrid. :class:`HybridClassifier` is that pipeline as a scikit-learn estimator::

    from allkit.hybrid import HybridClassifier, cnn_predict_proba

    hybrid = HybridClassifier(cnn=fine_tuned_model)            # the CNN is used as is, never trained here
    hybrid.fit(train_ds, eval_sets=[("train", train_ds), ("validation", val_ds)])
    hybrid.score(test_ds)                                       # accuracy of CNN features + XGBoost
    hybrid.evals_result_["validation"]["error"]                 # XGBoost's per-round curves (FIG 8)
    cnn_predict_proba(fine_tuned_model, test_ds)                # the CNN alone, for the comparison
    hybrid.save("runs/hybrid"); HybridClassifier.load("runs/hybrid", expected_backbone="efficientnet_b0")

Design notes:

* ``fit`` never trains the CNN. Pass the fine-tuned model as ``cnn=``; with ``cnn=None`` ``fit`` builds
  ``build_model(backbone, weights)`` (random initialisation seeded with ``seed`` when ``weights=None``,
  or the ImageNet weights) and uses it **without fine-tuning** (XGBoost on generic ImageNet features).
* Features are extracted with the evaluation preprocessing only: the cached uint8 pixels (centre crop
  and resize done once by :func:`allkit.data.build_cache`) -> ``to_model_input`` (``[0, 1]``, ImageNet
  normalisation if ``normalize``). A ``CellDataset``'s ``transform`` (augmentation) is ignored here.
* ``feature_source="logits"`` feeds XGBoost the CNN's head output instead of the pooled embedding. With
  an ImageNet model whose 1000-class head was never replaced (``cnn=None``, ``weights="imagenet"``) that
  is what the authors' public code actually did: XGBoost on 1000 ImageNet logits, not on the paper's
  1280-d features.
* Features are cached in memory (and, with ``feature_cache_dir``, in ``.npy`` files) under a key made of
  the CNN weights' sha256, the cells' paths and cache file, the cache's size and crop, the backbone,
  ``feature_source`` and ``normalize``: scoring the same dataset twice extracts once.
* ``save`` / ``load`` use no pickle: the CNN ``state_dict`` (``torch.save`` of tensors only, read back
  with ``weights_only=True``), XGBoost's JSON model and a ``manifest.json`` with the sha256 of each file.

Labels follow allkit: HEM (normal) = 0, ALL (malignant) = 1; ``predict_proba`` columns are ``[HEM, ALL]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score
from torch import nn

from allkit.atomic import atomic_file, read_json, sha256_file
from allkit.constants import (
    BATCH_SIZE,
    CLASS_NAMES,
    CLASS_TO_LABEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SEED,
    XGB_ETA,
)
from allkit.errors import ModelError

__all__ = [
    "FEATURE_SOURCES",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "HybridClassifier",
    "cnn_predict_proba",
]

FEATURE_SOURCES = ("features", "logits")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "allkit.hybrid"
MANIFEST_VERSION = 1
SUPPORTED_MANIFEST_VERSIONS = (1,)
CNN_FILE = "cnn.pt"
XGB_FILE = "xgboost.json"
EVALS_FILE = "evals_result.json"
_MEMO_SIZE = 16  # feature arrays kept in memory per estimator
_DEVICE_FALLBACK_WARNING = r".*Falling back to prediction using DMatrix.*"


# --------------------------------------------------------------------------------------------------
# Datasets -> CNN outputs (evaluation preprocessing only)
# --------------------------------------------------------------------------------------------------


def _is_cell_dataset(dataset) -> bool:
    return hasattr(dataset, "cache") and hasattr(dataset, "rows") and hasattr(dataset.cache, "images")


def _is_dataset(obj) -> bool:
    """A dataset of cells (anything indexable yielding ``(image, label)``), as opposed to a feature array."""
    if isinstance(obj, (np.ndarray, torch.Tensor, list, tuple)):
        return False
    if hasattr(obj, "__array__") or hasattr(obj, "iloc"):  # pandas frames and other array-likes
        return False
    return isinstance(obj, torch.utils.data.Dataset) or _is_cell_dataset(obj)


def _normalization(value):
    """``True`` (ImageNet), ``False`` or a ``(mean, std)`` pair (also as JSON lists, from a manifest)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    try:
        mean, std = (tuple(float(v) for v in part) for part in value)
    except (TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"normalize={value!r}; expected True, False or a (mean, std) pair of 3 numbers each")
    return mean, std


def _without_augmentation(dataset):
    """``dataset`` with evaluation preprocessing only: a ``CellDataset``'s ``transform`` is dropped.

    Pixels then come straight from the cache (centre crop and resize done once); any other dataset is
    used as given and must return evaluation-ready images.
    """
    if _is_cell_dataset(dataset) and getattr(dataset, "transform", None) is not None:
        view = copy.copy(dataset)  # shares the cache, rows and labels
        view.transform = None
        return view
    return dataset


def _dataset_labels(dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)


def _dataset_preprocessing(dataset) -> dict:
    cache = getattr(dataset, "cache", None)
    size = getattr(cache, "size", None)
    crop = getattr(cache, "crop_ratio", None)
    return {"size": None if size is None else int(size), "crop_ratio": None if crop is None else float(crop)}


def check_preprocessing(dataset, expected: dict | None, expected_by: str, error: type[Exception]) -> None:
    """Refuse a dataset whose cells were cached at another size or crop ratio than ``expected`` (``{"size",
    "crop_ratio"}``; ``None`` values, or a dataset without a cache, are not checked): the model would get
    other pixels than it was made for and answer without complaint. ``expected_by`` completes "but ... with"."""
    given = _dataset_preprocessing(dataset)
    for name in ("size", "crop_ratio"):
        want, got = (expected or {}).get(name), given.get(name)
        if want is not None and got is not None and abs(float(want) - float(got)) > 1e-6:
            raise error(f"the dataset's cells are cached with {name}={got}, but {expected_by} with {name}={want}; "
                        f"rebuild the cache with build_cache(..., {name}={want})")


def _dataset_key(dataset) -> str | None:
    """Identity of a ``CellDataset``'s pixels (cells, cache file, size, crop); ``None`` for other datasets."""
    if not _is_cell_dataset(dataset) or getattr(dataset, "frame", None) is None:
        return None
    cache = dataset.cache
    digest = hashlib.sha256(
        f"{Path(cache.path).name}|{cache.size}|{float(cache.crop_ratio):.6f}|{len(dataset)}".encode()
    )
    for path in dataset.frame["path"]:
        digest.update(b"\0" + str(path).encode())
    return digest.hexdigest()


def _weights_hash(module: nn.Module) -> str:
    """sha256 of a module's class and ``state_dict`` (names, dtypes, shapes and bytes of every tensor)."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"|{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resolve_device(device) -> torch.device:
    """``"auto"``: CUDA, else Apple MPS, else CPU (:func:`allkit.perf.select_device`, which also refuses
    ``"cuda"`` on a machine without a GPU)."""
    from allkit.perf import select_device

    return select_device(device)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _run(
    module: nn.Module,
    dataset,
    *,
    batch_size: int,
    device: torch.device,
    normalize,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """``module`` (normalised batch -> ``(B, D)``) over ``dataset`` in order: a float32 ``(N, D)`` array.

    :func:`allkit.train.batched_inference` on the augmentation-free view of ``dataset``: cached pixels ->
    ``to_model_input``, ``torch.inference_mode``, ``module`` in eval mode on ``device`` (its train/eval
    mode restored afterwards), exact float32 (no autocast).
    """
    from allkit.train import batched_inference

    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
    if len(dataset) == 0:
        raise ValueError("cannot extract anything from an empty dataset (0 cells)")
    outputs = [
        out.reshape(out.shape[0], -1)
        for out in batched_inference(
            module, _without_augmentation(dataset), batch_size=int(batch_size), device=device,
            progress=progress, normalize=_normalization(normalize), desc=desc,
        )
    ]
    return torch.cat(outputs).numpy().astype(np.float32, copy=False)


def cnn_predict_proba(
    cnn: nn.Module,
    dataset,
    *,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    normalize: bool = True,
    progress: bool = False,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities of the CNN alone (softmax of its 2-class head): float32 ``(N, 2)``, ``[HEM, ALL]``.

    ``tta=True``: the mean softmax over the eight dihedral views of each cell (:data:`allkit.tta.DIHEDRAL_VIEWS`).

    This is the paper's "CNN alone" baseline (0.81 accuracy) to compare with the hybrid (0.85). The
    same evaluation preprocessing as :meth:`HybridClassifier.extract_features`; ``device=None`` runs
    where ``cnn`` already is. Raises :class:`ModelError` unless the head has exactly 2 outputs.
    """
    from allkit.models import LogitsExtractor
    from allkit.tta import DIHEDRAL_VIEWS, DihedralView

    views = DIHEDRAL_VIEWS if tta else DIHEDRAL_VIEWS[:1]  # view 0 is the cell as it is
    device = _module_device(cnn) if device is None else _resolve_device(device)
    total = np.zeros((len(dataset), len(CLASS_NAMES)), dtype=np.float64)
    for index, (turns, flip) in enumerate(views):
        module = LogitsExtractor(cnn) if index == 0 else DihedralView(LogitsExtractor(cnn), turns, flip)
        module.training = cnn.training  # so that batched_inference restores the CNN's own mode
        logits = _run(module, dataset, batch_size=batch_size, device=device, normalize=normalize, progress=progress,
                      desc=f"CNN predictions, view {index}" if tta else "CNN predictions")
        if logits.shape[1] != len(CLASS_NAMES):
            raise ModelError(
                f"the CNN has a {logits.shape[1]}-output head; cnn_predict_proba expects {len(CLASS_NAMES)} "
                f"outputs ({', '.join(CLASS_NAMES)}), i.e. a model fine-tuned with build_model(..., num_classes=2)"
            )
        total += torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    return (total / len(views)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_json(path: Path, payload) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, allow_nan=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _library_versions() -> dict:
    import sklearn
    import torchvision
    import xgboost

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "xgboost": xgboost.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
    }


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` dir to ``target``, replacing an old one without ever half-writing it."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------------


class HybridClassifier(ClassifierMixin, BaseEstimator):
    """CNN features + XGBoost (the paper's hybrid), with scikit-learn conventions.

    Args:
        backbone: a name from :func:`allkit.models.list_backbones` (the paper: ``"efficientnet_b0"``).
        cnn: the fine-tuned model (``build_model(backbone, ...)`` then trained, e.g. by
            :class:`allkit.train.Trainer`). ``fit`` puts it in eval mode on ``device`` and never trains
            it. ``None``: ``fit`` builds ``build_model(backbone, weights)`` (seeded with ``seed``) and uses
            it **without fine-tuning**.
        weights: only with ``cnn=None``: ``None`` (random init), ``"imagenet"``, ``"offline"`` or a path.
        feature_source: ``"features"`` (the paper: the pooled embedding, 1280-d for EfficientNet-B0) or
            ``"logits"`` (the head's output; with a 1000-class ImageNet head, what the authors' code did).
        normalize: as in training: ``True`` (ImageNet statistics), ``False`` ([0, 1], the paper's pipeline)
            or ``(mean, std)`` (a backbone's own, e.g. EfficientNet-Lite0's ``spec.mean/std``).
        eta: XGBoost learning rate (the paper: 0.35).
        n_estimators, max_depth: XGBoost's number of rounds and tree depth.
        xgb_params: extra ``xgboost.XGBClassifier`` parameters (override the ones above), JSON-serialisable
            so that :meth:`save` can record them.
        batch_size: cells per CNN forward pass.
        device: ``"auto"`` (CUDA when available, else CPU), or a torch device; XGBoost runs on CUDA when
            this is a CUDA device (``tree_method="hist"``, ``device="cuda"``), else on the CPU.
        seed: XGBoost's ``random_state`` and the seed of a randomly initialised CNN.
        feature_cache_dir: folder for ``.npy`` feature caches (``None``: memory only).
        progress: show tqdm progress bars during extraction.
        tta: predict a dataset as the mean of XGBoost's probabilities over the eight dihedral views of each
            cell (flips and quarter turns; :mod:`allkit.tta`), as the improved recipe does. Fitting always
            uses the plain view. Saved with the model, so ``allkit evaluate`` applies it too.
        threshold: :meth:`predict` calls a cell ALL when P(ALL) > ``threshold`` (0.5: the argmax; the
            improved recipe sets the one chosen on validation cells). Saved with the model.

    Fitted attributes: ``classes_`` (``[0, 1]``), ``cnn_``, ``xgb_`` (the ``XGBClassifier``), ``booster_``,
    ``n_features_in_``, ``evals_result_`` (``{set name: {"error": [...], "auc": [...]}}``, one value per
    boosting round), ``device_`` and ``preprocessing_`` (cache size and crop of the training cells).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        cnn: nn.Module | None = None,
        weights: str | os.PathLike | None = None,
        feature_source: str = "features",
        normalize: bool = True,
        eta: float = XGB_ETA,
        n_estimators: int = 100,
        max_depth: int = 6,
        xgb_params: dict | None = None,
        batch_size: int = BATCH_SIZE,
        device: str | torch.device = "auto",
        seed: int = SEED,
        feature_cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        tta: bool = False,
        threshold: float = 0.5,
    ):
        self.backbone = backbone
        self.cnn = cnn
        self.weights = weights
        self.feature_source = feature_source
        self.normalize = normalize
        self.eta = eta
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.xgb_params = xgb_params
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.feature_cache_dir = feature_cache_dir
        self.progress = progress
        self.tta = tta
        self.threshold = threshold

    # ---------------------------------------------------------------------------------------- helpers

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "xgb_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "xgb_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with a training dataset "
                "(or features and labels) before using this estimator."
            )

    def _spec(self):
        from allkit.models import get_spec

        return get_spec(self.backbone)

    def _check_feature_source(self) -> None:
        if self.feature_source not in FEATURE_SOURCES:
            raise ValueError(f"feature_source={self.feature_source!r}; expected one of {FEATURE_SOURCES}")

    def _prepare_cnn(self) -> None:
        """Set ``cnn_`` (eval mode, on ``device_``) from ``cnn`` or ``build_model(backbone, weights)``."""
        from allkit.models import build_model, head_module

        spec = self._spec()
        self._check_feature_source()
        device = _resolve_device(self.device)
        if self.cnn is not None:
            if not isinstance(self.cnn, nn.Module):
                raise ModelError(f"cnn must be a torch.nn.Module or None, got {type(self.cnn).__name__}")
            model = self.cnn
        else:
            num_classes = 1000 if self.feature_source == "logits" else len(CLASS_NAMES)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.seed))
                model = build_model(spec.name, self.weights, num_classes=num_classes)
        head = head_module(model, spec.name)  # ModelError if the CNN is not a `backbone`
        self.cnn_ = model.to(device).eval()
        self.device_ = device
        self._cnn_outputs = int(head.out_features)
        self._cnn_signature = self._current_cnn_signature()

    def _current_cnn_signature(self) -> tuple:
        built = self.cnn is None  # what a built CNN depends on; a given CNN is identified by its object
        return (id(self.cnn), str(self.backbone), str(self.device), str(self.weights) if built else None,
                self.feature_source if built else None, int(self.seed) if built else None)

    def _ensure_cnn(self) -> None:
        """After ``fit`` the fitted CNN is kept (changing parameters needs a new ``fit``); before ``fit``
        the CNN follows the current parameters."""
        if hasattr(self, "xgb_"):
            return
        if getattr(self, "cnn_", None) is None or self.__dict__.get("_cnn_signature") != self._current_cnn_signature():
            self._prepare_cnn()

    def _extractor(self) -> nn.Module:
        from allkit.models import feature_extractor, logits_extractor

        self.cnn_.eval()
        if self.feature_source == "logits":
            module = logits_extractor(self.cnn_, self._spec().name)
        else:
            module = feature_extractor(self.cnn_, self._spec().name)
        module.training = False  # a fresh wrapper says "training"; the frozen CNN stays in eval mode
        return module

    def _expected_dim(self) -> int:
        return self._cnn_outputs if self.feature_source == "logits" else self._spec().feature_dim

    def _cache_key(self, dataset) -> str | None:
        data_key = _dataset_key(dataset)
        if data_key is None:
            return None
        spec = self._spec()
        text = f"v1|{spec.name}|{self.feature_source}|{_normalization(self.normalize)}|{_weights_hash(self.cnn_)}|{data_key}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _memo(self) -> OrderedDict:
        memo = self.__dict__.get("_feature_memo")
        if memo is None:
            memo = self.__dict__["_feature_memo"] = OrderedDict()
        return memo

    # ------------------------------------------------------------------------------------ features

    def extract_features(self, dataset) -> np.ndarray:
        """The CNN's features of every cell of ``dataset``: float32 ``(N, D)`` (``D`` = ``n_features_in_``).

        The frozen CNN runs in eval mode under ``torch.inference_mode`` on the evaluation preprocessing
        only (never augmentation), ``batch_size`` cells at a time. Results are cached in memory and, with
        ``feature_cache_dir``, on disk, so asking twice for the same cells and weights extracts once.
        Works before ``fit`` too (it then prepares the CNN as ``fit`` would).
        """
        if not _is_dataset(dataset):
            raise ValueError(
                f"extract_features expects a dataset of cells (e.g. allkit.data.CellDataset), "
                f"got {type(dataset).__name__}"
            )
        self._ensure_cnn()
        self._check_dataset_preprocessing(dataset)
        key = self._cache_key(dataset)
        memo = self._memo()
        if key is not None and key in memo:
            memo.move_to_end(key)
            return memo[key].copy()
        features = self._read_disk_cache(key, len(dataset))
        if features is None:
            features = _run(
                self._extractor(), dataset, batch_size=self.batch_size, device=self.device_,
                normalize=self.normalize, progress=self.progress, desc=f"CNN {self.feature_source}",
            )
            self._write_disk_cache(key, features)
        if key is not None:
            memo[key] = features
            while len(memo) > _MEMO_SIZE:
                memo.popitem(last=False)
            return features.copy()
        return features

    def _disk_path(self, key: str | None) -> Path | None:
        if key is None or self.feature_cache_dir is None:
            return None
        return Path(self.feature_cache_dir).expanduser() / f"features-{key[:32]}.npy"

    def _read_disk_cache(self, key: str | None, n: int) -> np.ndarray | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged cache file is recomputed, never trusted
        if array.dtype != np.float32 or array.ndim != 2 or array.shape != (n, self._expected_dim()):
            return None
        return array

    def _write_disk_cache(self, key: str | None, features: np.ndarray) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        with atomic_file(path, "wb") as handle:
            np.save(handle, features, allow_pickle=False)

    def _check_dataset_preprocessing(self, dataset) -> None:
        check_preprocessing(dataset, getattr(self, "preprocessing_", None), "this model was fitted on cells", ModelError)

    def _as_features(self, X, *, fitting: bool = False) -> np.ndarray:
        if _is_dataset(X):
            return self.extract_features(X)
        array = np.asarray(X, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(
                f"expected a dataset of cells or a 2-D feature array (n_cells, n_features), got shape {array.shape}"
            )
        expected = self._expected_dim() if fitting else self.n_features_in_
        if array.shape[1] != expected:
            raise ValueError(
                f"feature array has {array.shape[1]} columns, expected {expected} (the "
                f"{self.feature_source!r} of {self._spec().name}'s CNN); extract them with extract_features"
            )
        return array

    def _xy(self, data, y=None, *, what: str = "training data") -> tuple[np.ndarray, np.ndarray]:
        if _is_dataset(data):
            if y is not None:
                raise ValueError(f"{what}: pass y only with a feature array; a dataset carries its own labels")
            X, labels = self.extract_features(data), _dataset_labels(data)
        else:
            if y is None:
                raise ValueError(f"{what}: a feature array needs its labels y (0 = HEM, 1 = ALL)")
            X, labels = self._as_features(data, fitting=True), np.asarray(y).ravel()
        if len(labels) != len(X):
            raise ValueError(f"{what}: {len(X)} feature rows but {len(labels)} labels")
        if labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"{what}: labels must be 0 (HEM) or 1 (ALL), got non-integer values")
        labels = labels.astype(np.int64)
        unknown = sorted(set(np.unique(labels).tolist()) - set(CLASS_TO_LABEL.values()))
        if unknown:
            raise ValueError(f"{what}: labels must be 0 (HEM) or 1 (ALL), got {unknown}")
        return X, labels

    # ----------------------------------------------------------------------------------------- fit

    def _xgb_device(self) -> str:
        return "cuda" if self.device_.type == "cuda" else "cpu"

    def _xgb_kwargs(self) -> dict:
        kwargs = {
            "n_estimators": int(self.n_estimators),
            "max_depth": int(self.max_depth),
            "learning_rate": float(self.eta),
            "objective": "binary:logistic",
            "tree_method": "hist",
            "device": self._xgb_device(),
            "eval_metric": ["error", "auc"],
            "random_state": int(self.seed),
        }
        kwargs.update(dict(self.xgb_params or {}))
        return kwargs

    def fit(self, train, y=None, eval_sets: Sequence[tuple] | None = None) -> HybridClassifier:
        """Extract the CNN features of ``train`` and fit XGBoost on them.

        Args:
            train: a dataset of cells (labels taken from it) or a feature array ``(N, D)``.
            y: labels (0 = HEM, 1 = ALL), only with a feature array.
            eval_sets: ``[(name, dataset or (X, y)), ...]`` whose XGBoost error and AUC are recorded per
                boosting round in ``evals_result_[name]``. Default: ``[("train", train)]``. Pass e.g.
                ``[("train", train_ds), ("validation", val_ds)]`` for the paper's FIG 8.

        Returns:
            self
        """
        from xgboost import XGBClassifier

        for attr in ("xgb_", "booster_", "evals_result_", "n_features_in_", "classes_"):
            self.__dict__.pop(attr, None)
        self._prepare_cnn()
        # set before extracting, so that eval sets cached at another size or crop are refused
        self.preprocessing_ = _dataset_preprocessing(train) if _is_dataset(train) else None
        X, labels = self._xy(train, y)
        if len(np.unique(labels)) < len(CLASS_NAMES):
            raise ValueError(
                f"training data holds only class {CLASS_NAMES[int(labels[0])] if len(labels) else '(none)'}; "
                f"expected both {' and '.join(CLASS_NAMES)} cells"
            )
        if eval_sets is None:
            sets = [("train", (X, labels))]
        else:
            if isinstance(eval_sets, (str, bytes)) or not all(
                isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                for item in eval_sets
            ):
                raise ValueError("eval_sets must be a list of (name, dataset) or (name, (X, y)) pairs")
            names = [name for name, _ in eval_sets]
            if len(set(names)) != len(names):
                raise ValueError(f"eval_sets names must be unique, got {names}")
            sets = []
            for name, data in eval_sets:
                if _is_dataset(data):
                    sets.append((name, self._xy(data, what=f"eval set {name!r}")))
                elif isinstance(data, (tuple, list)) and len(data) == 2:
                    sets.append((name, self._xy(data[0], data[1], what=f"eval set {name!r}")))
                else:
                    raise ValueError(f"eval set {name!r}: expected a dataset or an (X, y) pair")

        model = XGBClassifier(**self._xgb_kwargs())
        model.fit(X, labels, eval_set=[xy for _, xy in sets], verbose=False)
        raw = model.evals_result()
        self.evals_result_ = {
            name: {metric: [float(v) for v in values] for metric, values in raw[f"validation_{i}"].items()}
            for i, (name, _) in enumerate(sets)
        }
        self.xgb_ = model
        self.booster_ = model.get_booster()
        self.classes_ = np.array(sorted(CLASS_TO_LABEL.values()), dtype=np.int64)
        self.n_features_in_ = int(X.shape[1])
        return self

    # ------------------------------------------------------------------------------------- predict

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities ``(N, 2)``, columns in ``classes_`` order: ``[P(HEM), P(ALL)]``.

        With ``tta=True`` and a dataset, the mean over the eight dihedral views of every cell
        (:mod:`allkit.tta`); a feature array is always predicted as given.
        """
        self._check_fitted()
        if self.tta and _is_dataset(X):
            from allkit.tta import DIHEDRAL_VIEWS

            views = range(len(DIHEDRAL_VIEWS))
            return np.mean([self._xgb_proba(self._view_features(X, view)) for view in views], axis=0)
        return self._xgb_proba(self._as_features(X))

    def _xgb_proba(self, features: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEVICE_FALLBACK_WARNING)
            return self.xgb_.predict_proba(features)

    def _view_features(self, dataset, view: int) -> np.ndarray:
        from allkit.tta import DIHEDRAL_VIEWS, DihedralView

        if view == 0:
            return self.extract_features(dataset)
        self._ensure_cnn()
        self._check_dataset_preprocessing(dataset)
        turns, flip = DIHEDRAL_VIEWS[view]
        return _run(DihedralView(self._extractor(), turns, flip), dataset, batch_size=self.batch_size,
                    device=self.device_, normalize=self.normalize, progress=self.progress,
                    desc=f"CNN {self.feature_source}, view {view}")

    def predict(self, X) -> np.ndarray:
        """Predicted labels (0 = HEM, 1 = ALL): ALL where P(ALL) > ``threshold``."""
        self._check_fitted()
        threshold = float(self.threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold!r}; expected a probability in [0, 1]")
        return (self.predict_proba(X)[:, 1] > threshold).astype(np.int64)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy on a dataset (its own labels) or on a feature array with ``y``."""
        self._check_fitted()
        if _is_dataset(X):
            if y is None:
                y = _dataset_labels(X)
        elif y is None:
            raise ValueError("score on a feature array needs its labels y")
        return float(accuracy_score(np.asarray(y).ravel(), self.predict(X), sample_weight=sample_weight))

    # ---------------------------------------------------------------------------------- save / load

    def _json_params(self) -> dict:
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "cnn"}
        for key in ("weights", "feature_cache_dir"):
            if params[key] is not None:
                params[key] = str(params[key])
        params["device"] = str(params["device"])
        norm = _normalization(params["normalize"])
        params["normalize"] = norm if isinstance(norm, bool) else [list(norm[0]), list(norm[1])]
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ModelError(
                f"cannot save: parameters must be JSON-serialisable (xgb_params={self.xgb_params!r}): {err}"
            ) from err
        return params

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted hybrid to directory ``path`` (replacing a previous saved model there) atomically.

        Contents: ``cnn.pt`` (the CNN ``state_dict``, tensors only), ``xgboost.json`` (XGBoost's own
        format), ``evals_result.json`` and ``manifest.json`` (versions, backbone, class mapping,
        preprocessing, feature source and dimension, parameters, sha256 of each file). The directory is
        built next to ``path`` and renamed into place, so ``path`` is never half-written. An existing
        ``path`` that is not a saved model (non-empty, no manifest) is refused rather than replaced.
        """
        import allkit

        self._check_fitted()
        target = Path(path).expanduser().absolute()
        if target.exists() and not target.is_dir():
            raise ModelError(f"cannot save the model to {target}: it exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
            raise ModelError(
                f"refusing to replace {target}: it is a non-empty directory without {MANIFEST_NAME}, "
                "not a saved allkit model; choose another path"
            )
        params = self._json_params()
        spec = self._spec()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            os.chmod(tmp, 0o755)
            state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.cnn_.state_dict().items()}
            torch.save(state, tmp / CNN_FILE)
            _fsync(tmp / CNN_FILE)
            self.xgb_.save_model(str(tmp / XGB_FILE))
            _fsync(tmp / XGB_FILE)
            _write_json(tmp / EVALS_FILE, self.evals_result_)
            files = [CNN_FILE, XGB_FILE, EVALS_FILE]
            preprocessing = dict(self.preprocessing_ or {"size": None, "crop_ratio": None})
            norm = _normalization(self.normalize)
            preprocessing.update(
                crop="centre crop of crop_ratio x the shorter side (448/450 for C-NMC), then resize to size",
                normalize=norm is not False,
                mean=None if norm is False else list(IMAGENET_MEAN if norm is True else norm[0]),
                std=None if norm is False else list(IMAGENET_STD if norm is True else norm[1]),
                augmentation=None,
            )
            manifest = {
                "format": MANIFEST_FORMAT,
                "manifest_version": MANIFEST_VERSION,
                "allkit_version": allkit.__version__,
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "backbone": spec.name,
                "cnn_class": type(self.cnn_).__qualname__,
                "cnn_num_outputs": int(self._cnn_outputs),
                "num_classes": len(CLASS_NAMES),
                "class_mapping": dict(CLASS_TO_LABEL),
                "classes": [int(c) for c in self.classes_],
                "preprocessing": preprocessing,
                "feature_source": self.feature_source,
                "feature_dim": int(self.n_features_in_),
                "params": params,
                "versions": _library_versions(),
                "files": {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                          for name in files},
            }
            _write_json(tmp / MANIFEST_NAME, manifest)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        expected_backbone: str | None = None,
        device: str | torch.device = "auto",
        feature_cache_dir: str | os.PathLike | None = None,
        progress: bool | None = None,
    ) -> HybridClassifier:
        """Load a model written by :meth:`save`, checking it first; :class:`ModelError` on any mismatch.

        Refused: a missing directory, manifest or file; a file whose sha256 differs from the manifest's
        (corrupted or edited); an unknown manifest format or version; a class mapping other than
        ``{"HEM": 0, "ALL": 1}``; a backbone other than ``expected_backbone`` (when given); a CNN
        ``state_dict`` that does not fit the manifest's backbone. Nothing is unpickled: the CNN is read
        with ``torch.load(weights_only=True)``, XGBoost from JSON. ``device``, ``feature_cache_dir`` and
        ``progress`` are this machine's choices (not taken from the file).
        """
        from xgboost import XGBClassifier
        from xgboost.core import XGBoostError

        from allkit.models import build_model, get_spec, head_module

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model directory {folder} does not exist; expected a folder written by save()")
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ModelError(f"{manifest_path} is missing; expected a model directory written by save()")
        manifest = read_json(manifest_path, ModelError, "; the model directory is damaged")
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ModelError(f"{manifest_path} is not an allkit hybrid manifest (expected format {MANIFEST_FORMAT!r})")
        version = manifest.get("manifest_version")
        if version not in SUPPORTED_MANIFEST_VERSIONS:
            raise ModelError(
                f"{manifest_path} has manifest_version {version!r}; this allkit reads version(s) "
                f"{', '.join(map(str, SUPPORTED_MANIFEST_VERSIONS))}: upgrade allkit to load it"
            )
        mapping = manifest.get("class_mapping")
        if mapping != dict(CLASS_TO_LABEL):
            raise ModelError(
                f"{manifest_path} has class mapping {mapping!r}; expected {dict(CLASS_TO_LABEL)!r} "
                "(HEM = 0, ALL = 1 everywhere in allkit)"
            )
        try:
            backbone = get_spec(manifest.get("backbone")).name
        except ModelError as err:
            raise ModelError(f"{manifest_path}: {err}") from err
        if expected_backbone is not None and get_spec(expected_backbone).name != backbone:
            raise ModelError(
                f"{folder} holds a model with backbone {backbone!r}, expected backbone "
                f"{get_spec(expected_backbone).name!r}"
            )
        files = manifest.get("files")
        if not isinstance(files, dict) or not {CNN_FILE, XGB_FILE} <= set(files):
            raise ModelError(f"{manifest_path} does not list {CNN_FILE} and {XGB_FILE}; the manifest is damaged")
        for name, info in files.items():
            if Path(name).name != name:
                raise ModelError(f"{manifest_path} lists {name!r}, expected a plain file name")
            file = folder / name
            if not file.is_file():
                raise ModelError(f"{file} is missing; the model directory is incomplete (re-save the model)")
            expected_sha = info.get("sha256") if isinstance(info, dict) else None
            actual_sha = sha256_file(file)
            if actual_sha != expected_sha:
                raise ModelError(
                    f"{file} is corrupted or was modified: sha256 {actual_sha[:16]}..., expected "
                    f"{str(expected_sha)[:16]}... from {MANIFEST_NAME}"
                )
        feature_source = manifest.get("feature_source")
        if feature_source not in FEATURE_SOURCES:
            raise ModelError(f"{manifest_path}: feature_source {feature_source!r}, expected one of {FEATURE_SOURCES}")
        n_outputs = manifest.get("cnn_num_outputs")
        if isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < 1:
            raise ModelError(f"{manifest_path}: cnn_num_outputs {n_outputs!r}, expected a positive integer")

        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG
            cnn = build_model(backbone, folder / CNN_FILE, num_classes=n_outputs)  # weights_only=True
        if head_module(cnn, backbone).out_features != n_outputs:
            raise ModelError(f"{folder / CNN_FILE} has a head that does not match cnn_num_outputs={n_outputs}")

        xgb = XGBClassifier()
        try:
            xgb.load_model(str(folder / XGB_FILE))
        except (XGBoostError, ValueError, OSError) as err:
            raise ModelError(f"{folder / XGB_FILE} is not a readable XGBoost model: {err}") from err
        feature_dim = manifest.get("feature_dim")
        if xgb.n_features_in_ != feature_dim:
            raise ModelError(
                f"{folder / XGB_FILE} takes {xgb.n_features_in_} features, the manifest says {feature_dim}"
            )
        expected_dim = n_outputs if feature_source == "logits" else get_spec(backbone).feature_dim
        if feature_dim != expected_dim:
            raise ModelError(
                f"{manifest_path}: feature_dim {feature_dim} does not match the {feature_source!r} of a "
                f"{backbone} with {n_outputs} outputs ({expected_dim})"
            )
        evals = {}
        if EVALS_FILE in files:
            evals = read_json(folder / EVALS_FILE, ModelError)

        params = dict(manifest.get("params") or {})
        known = set(cls().get_params(deep=False))
        params = {k: v for k, v in params.items() if k in known and k != "cnn"}
        params.update(backbone=backbone, feature_source=feature_source, cnn=cnn, device=device,
                      feature_cache_dir=feature_cache_dir)
        if progress is not None:
            params["progress"] = progress
        if "normalize" in params:
            params["normalize"] = _normalization(params["normalize"])
        model = cls(**params)
        model._prepare_cnn()
        xgb.set_params(device=model._xgb_device())
        model.xgb_ = xgb
        model.booster_ = xgb.get_booster()
        model.classes_ = np.array(manifest.get("classes", [0, 1]), dtype=np.int64)
        model.n_features_in_ = int(feature_dim)
        model.evals_result_ = evals
        pre = manifest.get("preprocessing") or {}
        model.preprocessing_ = {"size": pre.get("size"), "crop_ratio": pre.get("crop_ratio")}
        return model

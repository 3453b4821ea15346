"""The paper's hybrid: the fine-tuned CNN, frozen, turns each cell into its pooled feature vector (1280
numbers for EfficientNet-B0, the input of the CNN's own head), and XGBoost with learning rate 0.35 makes
the decision. The paper reports 0.81 accuracy for the CNN alone and 0.85 for the hybrid.

::

    hybrid = HybridClassifier(cnn=fine_tuned, backbone="efficientnet_b0")
    hybrid.fit(train_ds, eval_set=[("train", train_ds), ("validation", val_ds)])
    hybrid.predict_proba(test_ds)             # (N, 2): [P(HEM), P(ALL)]
    hybrid.save("runs/b0/model"); HybridClassifier.load("runs/b0/model")

A scikit-learn estimator: ``fit`` takes a dataset of cells (or a feature array with labels) and returns
``self``; fitted state ends in ``_``. The CNN is never trained here. Saved models hold no pickle: the
CNN's state_dict, XGBoost's JSON, and a manifest with the sha256 of each file, checked on load.
"""

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision
import xgboost
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from torch import nn

from allkit.constants import CLASS_TO_LABEL, SEED, XGB_ETA
from allkit.data import CellDataset, check_preprocessing
from allkit.device import select_device
from allkit.errors import ConfigError, ModelError
from allkit.files import atomic_folder, read_json, save_torch, sha256_file, write_json
from allkit.inference import predict
from allkit.models import PooledFeatures, build_model, get_backbone, head
from allkit.transforms import mean_std

MANIFEST, CNN_FILE, XGB_FILE = "manifest.json", "cnn.pt", "xgboost.json"
FORMAT, VERSION = "allkit.hybrid", 2


def extract_features(
    cnn: nn.Module, dataset: CellDataset, backbone, *, source: str = "features", **kwargs
) -> np.ndarray:
    """What the hybrid's XGBoost sees: the pooled vector the CNN's head receives (``"features"``, the
    paper) or the head's output (``"logits"``: with a kept 1000-class ImageNet head, what the authors'
    code fed XGBoost). Float32 ``(N, D)``; ``kwargs`` go to :func:`allkit.train.predict`."""
    if source not in ("features", "logits"):
        raise ConfigError(f"feature source {source!r}; expected 'features' or 'logits'")
    return predict(
        PooledFeatures(cnn, backbone) if source == "features" else cnn, dataset, desc=f"CNN {source}", **kwargs
    )


class HybridClassifier(ClassifierMixin, BaseEstimator):
    """CNN features → ``xgboost.XGBClassifier``. ``cnn`` is the fine-tuned model (built by
    :func:`allkit.models.build_model`); ``normalize`` must be what it was trained with. ``tta``: predict a
    dataset as the mean over the 8 dihedral views of each cell. ``threshold``: a cell is ALL when
    P(ALL) > threshold (0.5 is the argmax). Both are saved with the model."""

    def __init__(
        self,
        cnn=None,
        backbone="auto",
        feature_source="features",
        normalize=True,
        eta=XGB_ETA,
        n_estimators=100,
        max_depth=6,
        xgb_params=None,
        batch_size=None,
        device="auto",
        seed=SEED,
        tta=False,
        threshold=0.5,
        progress=False,
    ):
        self.cnn = cnn
        self.backbone = backbone
        self.feature_source = feature_source
        self.normalize = normalize
        self.eta = eta
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.xgb_params = xgb_params
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.tta = tta
        self.threshold = threshold
        self.progress = progress

    @property
    def backbone_(self) -> str:
        """The backbone: ``backbone`` as given, or with ``"auto"`` the one :func:`allkit.models.build_model` built
        ``cnn`` as (EfficientNet-B0 for a model it did not build)."""
        if self.backbone != "auto":
            return self.backbone
        return getattr(self.cnn, "allkit_backbone", None) or "efficientnet_b0"

    def _check_params(self) -> None:
        get_backbone(self.backbone_)
        mean_std(self.normalize)
        if self.feature_source not in ("features", "logits"):
            raise ConfigError(f"feature_source={self.feature_source!r}; expected 'features' or 'logits'")
        for name in ("n_estimators", "max_depth", "batch_size"):
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name}={value!r}; expected a positive integer")
        if not (isinstance(self.eta, (int, float)) and 0 < self.eta <= 1):
            raise ConfigError(f"eta={self.eta!r}; expected a learning rate in (0, 1] (the paper: {XGB_ETA})")
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
            raise ConfigError(f"threshold={self.threshold!r}; expected a probability in [0, 1]")
        if not isinstance(self.tta, (bool, np.bool_)):
            raise ConfigError(f"tta={self.tta!r}; expected True or False")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed!r}; expected a whole number from 0 to 2**32 - 1")

    # ------------------------------------------------------------------------------------- features
    def transform(self, cells: CellDataset, view: int = 0) -> np.ndarray:
        """The CNN features of every cell (float32 ``(N, D)``), under the evaluation preprocessing."""
        if not isinstance(cells, CellDataset):
            raise ConfigError(f"expected a CellDataset of cells, got {type(cells).__name__}")
        if self.cnn is None:
            raise ConfigError("HybridClassifier(cnn=None) cannot see cells: pass the fine-tuned CNN as cnn=")
        if not isinstance(self.cnn, nn.Module):
            raise ConfigError(f"cnn must be a torch.nn.Module, got {type(self.cnn).__name__}")
        head(self.cnn, self.backbone_)
        fitted = getattr(self, "preprocessing_", None)
        given = {"size": cells.cache.size, "crop_ratio": round(cells.cache.crop_ratio, 6)}
        if fitted and fitted != given:
            raise ModelError(
                f"the cells are cached with {given}, but this model was fitted on cells cached "
                f"with {fitted}; build the cache with those values"
            )
        return extract_features(
            self.cnn,
            cells,
            self.backbone_,
            source=self.feature_source,
            view=view,
            batch_size=None if self.batch_size is None else int(self.batch_size),
            device=select_device(self.device),
            normalize=self.normalize,
            progress=self.progress,
        )

    def _features(self, X, y=None, what="the training data") -> tuple[np.ndarray, np.ndarray | None]:
        if isinstance(X, CellDataset):
            if y is not None:
                raise ConfigError(f"{what}: pass y only with a feature array; a dataset carries its labels")
            return self.transform(X), X.labels.numpy()
        features = np.asarray(X, dtype=np.float32)
        if features.ndim != 2:
            raise ConfigError(f"{what}: expected a CellDataset or a 2-D feature array, got shape {features.shape}")
        expected = getattr(self, "n_features_in_", None)
        if expected is not None and features.shape[1] != expected:
            raise ConfigError(f"{what}: {features.shape[1]} feature columns; this model takes {expected}")
        if y is None:
            return features, None
        labels = np.asarray(y).ravel()
        if len(labels) != len(features) or not np.isin(labels, [0, 1]).all():
            raise ConfigError(f"{what}: expected {len(features)} labels, each 0 (HEM) or 1 (ALL)")
        return features, labels.astype(np.int64)

    # -------------------------------------------------------------------------------- fit / predict
    def fit(self, X, y=None, eval_set=None) -> "HybridClassifier":
        """Fit XGBoost on the CNN features of ``X`` (a dataset, or features with labels ``y``).
        ``eval_set``: ``[(name, dataset or (X, y)), ...]`` whose error and AUC are recorded per boosting
        round in ``evals_result_[name]`` (the paper's FIG 8); by default the training data."""
        self._check_params()
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)
        if isinstance(X, CellDataset):
            self.preprocessing_ = {"size": X.cache.size, "crop_ratio": round(X.cache.crop_ratio, 6)}
            self.provenance_ = {"fit_subjects": sorted(X.frame["subject"].astype(str).unique())}
        features, labels = self._features(X, y)
        if labels is None or len(np.unique(labels)) < 2:
            raise ConfigError("the training data needs labels of both classes (HEM = 0 and ALL = 1)")
        sets = [("train", (features, labels))] if eval_set is None else list(eval_set)
        evals = [
            self._features(*(data if isinstance(data, tuple) else (data,)), what=f"eval set {name!r}")
            for name, data in sets
        ]
        device = select_device(self.device)
        self.xgb_ = xgboost.XGBClassifier(
            n_estimators=int(self.n_estimators),
            max_depth=int(self.max_depth),
            learning_rate=float(self.eta),
            objective="binary:logistic",
            tree_method="hist",
            device="cuda" if device.type == "cuda" else "cpu",
            eval_metric=["error", "auc"],
            random_state=int(self.seed),
            **(self.xgb_params or {}),
        )
        self.xgb_.fit(features, labels, eval_set=evals, verbose=False)
        raw = self.xgb_.evals_result()
        self.evals_result_ = {
            name: {metric: [float(v) for v in values] for metric, values in raw[f"validation_{i}"].items()}
            for i, (name, _) in enumerate(sets)
        }
        self.classes_ = np.array(sorted(CLASS_TO_LABEL.values()))
        self.n_features_in_ = features.shape[1]
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "xgb_")

    def predict_proba(self, X) -> np.ndarray:
        """``(N, 2)``: ``[P(HEM), P(ALL)]``; a dataset with ``tta`` averages the 8 dihedral views."""
        if not hasattr(self, "xgb_"):
            raise NotFittedError("this HybridClassifier is not fitted yet: call fit first")
        if isinstance(X, CellDataset) and self.tta:
            return np.mean([self.xgb_.predict_proba(self.transform(X, view)) for view in range(8)], axis=0)
        return self.xgb_.predict_proba(self._features(X, what="the cells to predict")[0])

    def predict(self, X) -> np.ndarray:
        """Labels (HEM = 0, ALL = 1): ALL where P(ALL) > ``threshold``."""
        self._check_params()
        return (self.predict_proba(X)[:, 1] > float(self.threshold)).astype(np.int64)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy on a dataset (its own labels) or on features with labels ``y``."""
        y = X.labels.numpy() if isinstance(X, CellDataset) and y is None else y
        return float(np.average(self.predict(X) == np.asarray(y), weights=sample_weight))

    # ---------------------------------------------------------------------------------- save / load
    def save(self, path) -> Path:
        """Write the fitted model to folder ``path``, replacing an earlier saved model there all at once
        (built beside it, then renamed): ``path`` never holds half a model, and a failed save leaves the
        old one intact. A non-empty folder that is not a saved model is refused."""
        if not hasattr(self, "xgb_") or self.cnn is None:
            raise NotFittedError("only a fitted HybridClassifier with its cnn can be saved")
        target = Path(path).expanduser().absolute()
        if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).is_file())):
            raise ModelError(f"refusing to write the model to {target}: it exists and is not a saved model")
        params = {k: v for k, v in self.get_params().items() if k != "cnn"}
        params["normalize"] = mean_std(self.normalize) or False
        try:
            with atomic_folder(target) as tmp:
                save_torch({k: v.detach().cpu() for k, v in self.cnn.state_dict().items()}, tmp / CNN_FILE)
                self.xgb_.save_model(tmp / XGB_FILE)
                manifest = {
                    "format": FORMAT,
                    "version": VERSION,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "backbone": get_backbone(self.backbone_).name,
                    "cnn_outputs": head(self.cnn, self.backbone_).out_features,
                    "feature_dim": int(self.n_features_in_),
                    "classes": dict(CLASS_TO_LABEL),
                    "preprocessing": getattr(self, "preprocessing_", None),
                    "params": json.loads(json.dumps(params, default=str)),
                    "evals_result": self.evals_result_,
                    "provenance": getattr(self, "provenance_", None),
                    "files": {name: sha256_file(tmp / name) for name in (CNN_FILE, XGB_FILE)},
                    "versions": {
                        "python": platform.python_version(),
                        "torch": torch.__version__,
                        "torchvision": torchvision.__version__,
                        "xgboost": xgboost.__version__,
                        "sklearn": sklearn.__version__,
                    },
                }
                write_json(tmp / MANIFEST, {**manifest, "sha256": _content_sha256(manifest)})
        except OSError as err:
            raise ModelError(
                f"cannot save the model to {target}: {str(err).splitlines()[0]}; "
                "an earlier model there, if any, is unchanged"
            ) from err
        return target

    @classmethod
    def load(cls, path, *, device="auto", progress: bool = False) -> "HybridClassifier":
        """A model written by :meth:`save`, checked first: files against their sha256, the manifest's
        format, classes and values; nothing is unpickled. :class:`ModelError` names what is wrong."""
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model folder {folder} does not exist; expected a folder written by save()")
        manifest = read_json(folder / MANIFEST, ModelError, f"; {folder} is not a model folder written by save()")
        if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
            raise ModelError(f"{folder / MANIFEST} is not an allkit model of this version ({FORMAT} {VERSION})")
        if manifest.pop("sha256", None) != _content_sha256(manifest):
            raise ModelError(
                f"{folder / MANIFEST} was edited after the model was saved (its content no longer matches "
                "its sha256); save the model again instead of editing it"
            )
        if manifest.get("classes") != CLASS_TO_LABEL:
            raise ModelError(f"{folder / MANIFEST}: classes {manifest.get('classes')}; expected {CLASS_TO_LABEL}")
        for name, digest in (manifest.get("files") or {}).items():
            if Path(name).name != name or not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise ModelError(
                    f"{folder / name} is missing, damaged or was modified (its sha256 differs from "
                    f"the manifest's); save the model again"
                )
        if set(manifest.get("files") or {}) != {CNN_FILE, XGB_FILE}:
            raise ModelError(f"{folder / MANIFEST} must list {CNN_FILE} and {XGB_FILE}")
        try:
            params = dict(manifest["params"])
            if params["normalize"] is not False:
                params["normalize"] = tuple(tuple(float(v) for v in part) for part in params["normalize"])
            with torch.random.fork_rng(devices=[]):  # the new head's random init is overwritten
                cnn = build_model(manifest["backbone"], folder / CNN_FILE, num_classes=int(manifest["cnn_outputs"]))
            model = cls(**{**params, "cnn": cnn.eval(), "device": device, "progress": progress})
            model._check_params()
            dim = int(manifest["feature_dim"])
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise ModelError(
                f"{folder / MANIFEST} has a missing or invalid value ({err}); save the model again"
            ) from None
        try:
            model.xgb_ = xgboost.XGBClassifier()
            model.xgb_.load_model(folder / XGB_FILE)
            n_features = model.xgb_.n_features_in_
        except (xgboost.core.XGBoostError, ValueError, TypeError, KeyError, AttributeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(
                f"{folder / XGB_FILE} is not a readable XGBoost model ({first[:200]}); save the model again"
            ) from None
        gives = (
            head(cnn, model.backbone_).in_features
            if model.feature_source == "features"
            else int(manifest["cnn_outputs"])
        )
        if not n_features == gives == dim:
            raise ModelError(
                f"{folder}: XGBoost takes {n_features} features, the CNN gives {gives}, the manifest says {dim}"
            )
        pre = manifest.get("preprocessing")
        if pre is not None:
            try:
                check_preprocessing(pre.get("size"), pre.get("crop_ratio"))
            except (ConfigError, AttributeError) as err:
                raise ModelError(f"{folder / MANIFEST}: preprocessing {pre}: {err}") from None
            model.preprocessing_ = pre
        model.classes_, model.n_features_in_ = np.array([0, 1]), dim
        model.evals_result_ = manifest.get("evals_result") or {}
        model.provenance_ = manifest.get("provenance")
        return model


def _content_sha256(manifest: dict) -> str:
    """A hash of the manifest's own values, so that an edited threshold or size is refused, not used."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

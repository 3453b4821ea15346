"""Low-power deployment, measured: the fine-tuned CNN as an ONNX file, int8 quantisation, CPU latency.

The paper argues that its model suits the weak computers of small hospitals but never measures it. This
module turns a fine-tuned CNN into what such a machine would run, and measures it::

    from allkit.export import export_saved_model, OnnxPredictor, deployment_report

    result = export_saved_model("runs/sample/model", "model.onnx", int8=True)   # + model.int8.onnx
    predictor = OnnxPredictor("model.onnx", threads=1)                          # onnxruntime, CPU
    proba = predictor.predict_proba(test_dataset)                               # (N, 2): [HEM, ALL]
    report = deployment_report(["efficientnet_lite0", "resnet18"], image_size=224, ...)

What is exported: the fine-tuned CNN **alone** (its 2-class head, softmax probabilities ``[HEM, ALL]``).
The hybrid's XGBoost stage is not part of the ONNX graph: it stays in XGBoost's own JSON format
(``xgboost.json`` of the model folder), which XGBoost loads on any machine.

The ONNX graph takes what a deployment has: float32 NCHW RGB in ``[0, 1]`` (the cached uint8 pixels / 255,
i.e. after the centre crop and resize of :func:`allkit.transforms.decode_for_cache`), with the model's
normalisation (ImageNet statistics, none, or a backbone's own ``(mean, std)``) baked into the graph, and a
dynamic batch axis. Every ``.onnx`` gets a JSON manifest next to it (``model.onnx.json``: backbone, image
size, crop ratio, normalisation, class names, opset, sha256 of the ``.onnx``, library versions, source).

int8 (:func:`quantize_onnx`, ONNX Runtime's quantisation tools):

* ``"static"`` (the default): QDQ format, int8 weights (per channel) and uint8 activations whose ranges are
  calibrated (MinMax) on a few training cells. Convolutions then run as integer kernels.
* ``"dynamic"``: int8 weights, activations quantised at run time (no calibration). ONNX Runtime runs the
  quantised convolutions as ``ConvInteger``, which has no fast CPU kernel: on this project's four CNNs it
  was measured 3-9x *slower* than fp32 (benchmarks/deploy.py), and its fidelity varies (p(ALL) moved by up
  to 0.2-0.5 depending on model and cells). It is offered to show that, not to deploy.

Errors: missing packages raise :class:`MissingDependencyError` (``pip install 'allkit[onnx]'``); a bad
model folder, an unreadable ``.onnx``, a manifest that does not match its file raise :class:`ModelError`,
each naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import io
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from allkit.atomic import atomic_file, read_json, sha256_file, write_json
from allkit.constants import CLASS_NAMES, CLASS_TO_LABEL, IMAGENET_MEAN, IMAGENET_STD, SEED
from allkit.errors import AllkitError, DataError, ModelError
from allkit.transforms import DEFAULT_CROP_RATIO

__all__ = [
    "DEFAULT_OPSET",
    "DEPLOY_BACKBONES",
    "INT8_MODES",
    "INPUT_NAME",
    "ONNX_INSTALL_HINT",
    "OUTPUT_NAME",
    "DeployableModel",
    "ExportResult",
    "MissingDependencyError",
    "OnnxPredictor",
    "check_against_pytorch",
    "deployment_report",
    "export_onnx",
    "export_saved_model",
    "machine_facts",
    "manifest_path",
    "measure_latency",
    "quantize_onnx",
    "read_manifest",
    "report_table",
    "summary_table",
]

ONNX_INSTALL_HINT = "pip install 'allkit[onnx]'"
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
MANIFEST_FORMAT = "allkit.onnx"
MANIFEST_VERSION = 1
INT8_MODES = ("static", "dynamic")
#: The backbones of the deployment table: the paper's, its offline sibling, a small and a huge classic.
DEPLOY_BACKBONES = ("efficientnet_b0", "efficientnet_lite0", "resnet18", "vgg16")
NO_FINETUNED = "n/a (no fine-tuned model offline)"
SCOPE = ("the fine-tuned CNN alone (softmax over [HEM, ALL]), one view per cell; the hybrid's XGBoost stage is "
         "not in this graph and stays in XGBoost's JSON format (xgboost.json of the model folder), and "
         "test-time augmentation, if the saved model uses it, is not applied")


class MissingDependencyError(AllkitError, ImportError):
    """An optional package (onnx, onnxruntime) is not installed."""


# --------------------------------------------------------------------------------------------------
# Optional packages
# --------------------------------------------------------------------------------------------------


def _require(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(f"{purpose} needs the {module!r} package: install with "
                                     f"{ONNX_INSTALL_HINT}") from err


def _import_onnx():
    return _require("onnx", "exporting to ONNX")


def _import_ort():
    return _require("onnxruntime", "running or quantising ONNX models")


# --------------------------------------------------------------------------------------------------
# The deployable graph
# --------------------------------------------------------------------------------------------------


def _normalization(normalize):
    from allkit.hybrid import _normalization as parse

    try:
        return parse(normalize)
    except ValueError as err:
        raise ModelError(str(err)) from err


def _stats(normalize) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    norm = _normalization(normalize)
    if norm is False:
        return None
    return (IMAGENET_MEAN, IMAGENET_STD) if norm is True else norm


def _normalization_record(normalize) -> dict:
    stats = _stats(normalize)
    if stats is None:
        return {"in_graph": False, "kind": "none ([0, 1] as is)", "mean": None, "std": None}
    kind = "imagenet" if tuple(stats[0]) == tuple(IMAGENET_MEAN) and tuple(stats[1]) == tuple(IMAGENET_STD) \
        else "custom"
    return {"in_graph": True, "kind": kind, "mean": list(stats[0]), "std": list(stats[1])}


class DeployableModel(nn.Module):
    """float32 NCHW in ``[0, 1]`` -> the model's normalisation -> CNN -> softmax ``[HEM, ALL]``.

    The same arithmetic as :func:`allkit.transforms.to_model_input` followed by the CNN, so the exported
    graph needs nothing from allkit at run time. ``model`` is used as given (put it in eval mode).
    """

    def __init__(self, model: nn.Module, normalize=True):
        super().__init__()
        self.model = model
        stats = _stats(normalize)
        mean, std = stats if stats is not None else ((0.0,) * 3, (1.0,) * 3)
        self.normalized = stats is not None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from allkit.models import main_logits

        if self.normalized:
            x = (x - self.mean) * self.inv_std
        return torch.softmax(main_logits(self.model(x)), dim=1)


def manifest_path(onnx_path: str | os.PathLike) -> Path:
    """The manifest written next to an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(onnx_path)
    return path.with_name(path.name + ".json")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions() -> dict:
    import allkit

    versions = {"allkit": allkit.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def _check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ModelError(f"image_size={image_size!r}; expected an integer number of pixels >= 8")
    return int(image_size)


def _cpu_copy(model: nn.Module) -> nn.Module:
    # A copy, so that exporting never moves the caller's model off its device or out of train mode.
    try:
        return copy.deepcopy(model).to("cpu", torch.float32).eval()
    except Exception as err:  # hooks holding un-copyable objects, meta tensors, ...
        raise ModelError(f"cannot copy the {type(model).__name__} for export: {err}") from err


def _dummy_input(image_size: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(SEED))


def _torch_to_onnx_bytes(wrapper: nn.Module, dummy: torch.Tensor, opset: int) -> bytes:
    # The TorchScript exporter (dynamo=False) rather than torch 2.9+'s default torch.export-based one: it
    # needs no extra package (the dynamo exporter needs onnxscript), exports every backbone here
    # (EfficientNet-Lite0's static padding, Inception's branches) with a plain dynamic batch axis via
    # dynamic_axes, and folds batch norm into the convolutions in eval mode. It is deprecated upstream:
    # its warnings are silenced here, and the export is checked numerically against PyTorch right after.
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), buffer, dynamo=False, opset_version=int(opset), input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def _write_manifest(path: Path, manifest: dict) -> None:
    write_json(manifest_path(path), manifest, indent=2)


@dataclass
class ExportResult:
    """What :func:`export_saved_model` wrote: the fp32 model, and the int8 one when asked (``None`` if not)."""

    onnx: Path
    manifest: dict
    int8: Path | None = None
    int8_manifest: dict | None = None
    int8_error: str | None = None
    checks: dict = field(default_factory=dict)


def export_onnx(
    model: nn.Module,
    backbone: str,
    path: str | os.PathLike,
    *,
    image_size: int = 224,
    normalize=True,
    crop_ratio: float = DEFAULT_CROP_RATIO,
    opset: int = DEFAULT_OPSET,
    source: str | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
) -> Path:
    """Export the 2-class ``model`` (a ``backbone`` from :func:`allkit.models.build_model`) to ``path``.

    The graph: input ``image`` float32 ``[batch, 3, image_size, image_size]`` in ``[0, 1]`` -> ``normalize``
    (``True``: ImageNet statistics, ``False``: none, or a ``(mean, std)`` pair) -> CNN -> softmax; output
    ``probabilities`` ``[batch, 2]`` = ``[HEM, ALL]``. The batch axis is dynamic. ``crop_ratio`` is not in the
    graph (cropping happens before, when cells are decoded) but is recorded in the manifest, which is
    written to :func:`manifest_path`. Both files are written atomically.

    With ``verify`` (and onnxruntime installed) the file is run once on random input and must agree with
    PyTorch within ``tolerance`` (max absolute difference of probabilities), else :class:`ModelError`.
    Returns the path of the ``.onnx``. The XGBoost stage of a hybrid is not exported (see the module doc).
    """
    from allkit.models import get_spec, head_module

    onnx = _import_onnx()
    spec = get_spec(backbone)
    size = _check_image_size(image_size)
    if not 0.0 < float(crop_ratio) <= 1.0:
        raise ModelError(f"crop_ratio={crop_ratio!r}; expected a fraction in (0, 1]")
    n_out = head_module(model, spec.name).out_features
    if n_out != len(CLASS_NAMES):
        raise ModelError(f"the {spec.name} has a {n_out}-output head; export_onnx expects a fine-tuned "
                         f"{len(CLASS_NAMES)}-class model ({', '.join(CLASS_NAMES)})")
    wrapper = DeployableModel(_cpu_copy(model), normalize).eval()
    dummy = _dummy_input(size)
    try:
        data = _torch_to_onnx_bytes(wrapper, dummy, opset)
    except Exception as err:
        raise ModelError(f"torch.onnx.export failed for {spec.name} at {size} px (opset {opset}): "
                         f"{_first_line(err)}") from err
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as err:
        raise ModelError(f"the exported {spec.name} graph fails onnx.checker: {err}") from err
    if verify:
        try:
            ort = _import_ort()
        except MissingDependencyError:
            ort = None
        if ort is not None:
            session = ort.InferenceSession(data, _session_options(ort, 1), providers=["CPUExecutionProvider"])
            got = session.run(None, {INPUT_NAME: dummy.numpy()})[0]
            with torch.inference_mode():
                want = wrapper(dummy).numpy()
            diff = float(np.abs(got - want).max())
            if not diff <= tolerance:
                raise ModelError(f"the exported {spec.name} disagrees with PyTorch: max |Δp| = {diff:.2e} > "
                                 f"{tolerance:.0e} on random input")

    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a directory; expected the path of the .onnx file to write")
    _write_bytes(path, data)
    manifest = {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "file": path.name,
        "sha256": _sha256_bytes(data),
        "bytes": len(data),
        "precision": "fp32",
        "quantization": None,
        "backbone": spec.name,
        "image_size": size,
        "crop_ratio": float(crop_ratio),
        "normalization": _normalization_record(normalize),
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, size, size],
                  "range": [0.0, 1.0],
                  "preprocessing": f"RGB, centre crop of crop_ratio x the shorter side, resized to {size} px, "
                                   "uint8 / 255 (normalisation is inside the graph)"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(CLASS_NAMES)], "kind": "softmax probabilities"},
        "class_names": list(CLASS_NAMES),
        "class_mapping": dict(CLASS_TO_LABEL),
        "opset": int(opset),
        "exporter": "torch.onnx.export (TorchScript exporter, dynamo=False)",
        "scope": SCOPE,
        "source": None if source is None else str(source),
        "versions": _versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_manifest(path, manifest)
    return path


# --------------------------------------------------------------------------------------------------
# Manifest, session
# --------------------------------------------------------------------------------------------------


def read_manifest(onnx_path: str | os.PathLike, *, check_sha: bool = True) -> dict:
    """The manifest of an exported model, checked: it must exist, be an allkit ONNX manifest, and (with
    ``check_sha``) its sha256 must be the ``.onnx`` file's. :class:`ModelError` naming the file otherwise."""
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist; expected an .onnx file written by `allkit export --onnx`")
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise ModelError(f"{mpath} is missing; an exported model needs the manifest written next to it")
    manifest = read_json(mpath, ModelError)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{mpath} is not an allkit ONNX manifest (expected format {MANIFEST_FORMAT!r})")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ModelError(f"{mpath} has manifest_version {manifest.get('manifest_version')!r}; this allkit "
                         f"reads {MANIFEST_VERSION}")
    if manifest.get("class_mapping") != dict(CLASS_TO_LABEL):
        raise ModelError(f"{mpath} has class mapping {manifest.get('class_mapping')!r}; expected "
                         f"{dict(CLASS_TO_LABEL)!r}")
    if check_sha:
        actual = sha256_file(path)
        if actual != manifest.get("sha256"):
            raise ModelError(f"{path} does not match its manifest {mpath.name}: sha256 {actual[:16]}..., "
                             f"manifest says {str(manifest.get('sha256'))[:16]}... (file modified or the "
                             "manifest belongs to another model)")
    return manifest


def _session_options(ort, threads: int | None):
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: quantised graphs log benign warnings at load
    return options


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _default_threads() -> int:
    from allkit.perf import default_num_threads

    return default_num_threads()


class OnnxPredictor:
    """An exported model run by ONNX Runtime on the CPU (``CPUExecutionProvider``).

    ``threads``: ONNX Runtime intra-op threads (``None``: the cores this process may use; 1 imitates a
    weak machine). The manifest is read and its sha256 checked against the file first (``verify``).
    :meth:`predict_proba` takes uint8 NCHW cells (as cached, values 0-255), float NCHW in ``[0, 1]``,
    or an :class:`allkit.data.CellDataset` cached at the model's image size and crop ratio.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, verify: bool = True):
        ort = _import_ort()
        self.path = Path(path)
        self.manifest = read_manifest(self.path, check_sha=verify)
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ModelError(f"threads={threads!r}; expected a positive integer or None")
        self.threads = _default_threads() if threads is None else int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), _session_options(ort, self.threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise ModelError(f"{self.path} is not a readable ONNX model ({_first_line(err)})") from err
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape) if inputs else []
        size = self.image_size
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(shape) != 4 or shape[1:] != [3, size, size]:
            raise ModelError(f"{self.path} takes {[(i.name, i.shape) for i in inputs]}, but its manifest "
                             f"says one input {INPUT_NAME!r} of shape [batch, 3, {size}, {size}]")

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def crop_ratio(self) -> float:
        return float(self.manifest["crop_ratio"])

    @property
    def precision(self) -> str:
        return str(self.manifest.get("precision"))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph on a float32 ``[B, 3, S, S]`` batch in ``[0, 1]``: probabilities ``(B, 2)``."""
        return self.session.run(None, {INPUT_NAME: batch})[0]

    def _as_input(self, images) -> np.ndarray:
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        size = self.image_size
        if array.ndim != 4 or array.shape[1:] != (3, size, size):
            raise DataError(f"{self.path.name} expects images of shape [B, 3, {size}, {size}] (NCHW), got "
                            f"{tuple(array.shape)}")
        if array.dtype == np.uint8:
            return array.astype(np.float32) * np.float32(1.0 / 255.0)
        if not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{self.path.name} expects uint8 or float images, got dtype {array.dtype}")
        array = array.astype(np.float32, copy=False)
        if array.size and (array.min() < -1e-3 or array.max() > 1.0 + 1e-3):
            raise DataError(f"float images must be in [0, 1] (normalisation is inside the graph), got values in "
                            f"[{array.min():.3g}, {array.max():.3g}]")
        return np.ascontiguousarray(array)

    def predict_proba(self, images, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Probabilities ``(N, 2)`` (``[HEM, ALL]``) for an array/tensor of cells or a dataset of cells."""
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected a positive integer")
        if isinstance(images, (np.ndarray, torch.Tensor)):
            x = self._as_input(images)
            return np.concatenate([self.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
                if len(x) else np.zeros((0, len(CLASS_NAMES)), np.float32)
        from allkit.hybrid import _without_augmentation, check_preprocessing

        check_preprocessing(images, {"size": self.image_size, "crop_ratio": self.crop_ratio},
                            f"{self.path.name} was exported for cells", DataError)
        dataset = _without_augmentation(images)
        outputs = []
        starts = range(0, len(dataset), int(batch_size))
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"ONNX {self.precision}", unit="batch")
        for start in starts:
            indices = list(range(start, min(start + int(batch_size), len(dataset))))
            pixels = _dataset_pixels(dataset, indices)
            outputs.append(self.run(self._as_input(pixels)))
        if not outputs:
            raise DataError("cannot predict an empty dataset (0 cells)")
        return np.concatenate(outputs)

    def predict(self, images, **kwargs) -> np.ndarray:
        """Predicted labels (HEM = 0, ALL = 1)."""
        return self.predict_proba(images, **kwargs).argmax(axis=1)


def _dataset_pixels(dataset, indices: Sequence[int]) -> torch.Tensor:
    if hasattr(dataset, "__getitems__"):
        images = dataset.__getitems__(list(indices))[0]
    else:
        images = torch.stack([torch.as_tensor(dataset[i][0]) for i in indices])
    return images


def _dataset_labels(dataset) -> np.ndarray:
    from allkit.hybrid import _dataset_labels as labels

    return labels(dataset)


# --------------------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------------------


def _calibration_batch(calibration, n: int, manifest: dict, seed: int) -> tuple[np.ndarray, str]:
    """float32 ``[n, 3, S, S]`` in [0, 1] from a dataset (a seeded, class-balanced pick) or an array, for the
    exported model of ``manifest``."""
    image_size = int(manifest["image_size"])
    if calibration is None:
        raise ModelError("static int8 quantisation needs calibration cells (a few training cells); pass "
                         "calibration= (a CellDataset or uint8 NCHW array) or use mode='dynamic'")
    if isinstance(calibration, (np.ndarray, torch.Tensor)):
        array = calibration.numpy() if isinstance(calibration, torch.Tensor) else calibration
        if array.ndim != 4 or array.shape[1:] != (3, image_size, image_size):
            raise DataError(f"calibration images must be [N, 3, {image_size}, {image_size}], got {tuple(array.shape)}")
        array = array[:n]
        what = f"{len(array)} given images"
    else:
        from allkit.hybrid import check_preprocessing

        check_preprocessing(calibration, {"size": image_size, "crop_ratio": manifest["crop_ratio"]},
                            f"{manifest['file']} was exported for cells", DataError)
        rng = np.random.default_rng(seed)
        labels = _dataset_labels(calibration)
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        picked = []
        for i in range(max((len(p) for p in per_class), default=0)):  # round-robin over the classes
            picked += [int(p[i]) for p in per_class if i < len(p)]
        picked = sorted(picked[:n])
        if not picked:
            raise DataError("the calibration dataset holds no cells")
        array = _dataset_pixels(calibration, picked).numpy()
        counts = {CLASS_NAMES[c]: int((labels[picked] == c).sum()) for c in np.unique(labels)}
        what = f"{len(picked)} cells ({', '.join(f'{v} {k}' for k, v in counts.items())}), seeded pick"
    if len(array) == 0:
        raise DataError("no calibration images given")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    return np.ascontiguousarray(array, dtype=np.float32), what


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    mode: str = "static",
    calibration=None,
    n_calibration: int = 32,
    seed: int = SEED,
    per_channel: bool = True,
) -> Path:
    """int8 copy of an exported fp32 model (``dst`` default: ``model.int8.onnx`` next to ``src``), with manifest.

    ``mode="static"``: QDQ, int8 per-channel weights, uint8 activations calibrated (MinMax) on
    ``n_calibration`` cells of ``calibration`` (a dataset or uint8 NCHW array; pick them from the training
    cells, never the test cells). ``mode="dynamic"``: int8 weights only, no calibration. Both start from
    ONNX Runtime's ``quant_pre_process`` (shape inference, graph optimisation). The result must load and
    run in onnxruntime, else :class:`ModelError` says that it does not (nothing is written then).
    """
    ort = _import_ort()
    _import_onnx()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in INT8_MODES:
        raise ModelError(f"int8 mode {mode!r}; expected one of {', '.join(INT8_MODES)}")
    src = Path(src)
    manifest = read_manifest(src)
    if manifest.get("precision") != "fp32":
        raise ModelError(f"{src} is already {manifest.get('precision')}; quantise the fp32 export")
    dst = Path(dst) if dst is not None else src.with_name(src.name.removesuffix(".onnx") + ".int8.onnx")
    size = int(manifest["image_size"])
    with tempfile.TemporaryDirectory(prefix=".allkit-quant-", dir=dst.parent if dst.parent.is_dir() else None) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        with _quiet_quantizer():
            try:
                quant_pre_process(str(src), str(pre))
                preprocessed = True
            except Exception:  # symbolic shape inference can fail on exotic graphs: quantise the raw graph
                pre, preprocessed = src, False
            record = {"mode": mode, "tool": f"onnxruntime.quantization {ort.__version__}",
                      "pre_process": preprocessed, "per_channel": bool(per_channel), "weights": "int8"}
            try:
                if mode == "dynamic":
                    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
                    record.update(format="QOperator (dynamic: activations quantised at run time)",
                                  activations="uint8, range computed per batch at run time", calibration=None)
                else:
                    batch, what = _calibration_batch(calibration, int(n_calibration), manifest, seed)

                    class _Reader(CalibrationDataReader):
                        def __init__(self):
                            self._items = iter(batch[i:i + 1] for i in range(len(batch)))

                        def get_next(self):
                            item = next(self._items, None)
                            return None if item is None else {INPUT_NAME: item}

                    quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax)
                    record.update(format="QDQ (static)", activations="uint8, MinMax-calibrated",
                                  calibration=what, calibrate_method="MinMax")
            except (ModelError, DataError):
                raise
            except Exception as err:
                raise ModelError(f"int8 ({mode}) quantisation of {src} failed in onnxruntime "
                                 f"{ort.__version__}: {_first_line(err)}") from err
        try:  # a quantised graph that onnxruntime cannot run is reported, not shipped
            session = ort.InferenceSession(str(out), _session_options(ort, 1), providers=["CPUExecutionProvider"])
            probe = session.run(None, {INPUT_NAME: _dummy_input(size, 1).numpy()})[0]
        except Exception as err:
            raise ModelError(f"the int8 ({mode}) model of {src.name} does not run in onnxruntime "
                             f"{ort.__version__}: {_first_line(err)}") from err
        if probe.shape != (1, len(CLASS_NAMES)) or not np.all(np.isfinite(probe)):
            raise ModelError(f"the int8 ({mode}) model of {src.name} gives invalid output {probe!r}")
        data = out.read_bytes()
    _write_bytes(dst, data)
    int8_manifest = dict(manifest)
    int8_manifest.update(
        file=dst.name, sha256=_sha256_bytes(data), bytes=len(data), precision="int8", quantization=record,
        source=f"{src.name} (sha256 {manifest['sha256']}), from {manifest.get('source')}",
        versions=_versions(), created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _write_manifest(dst, int8_manifest)
    return dst


@contextlib.contextmanager
def _quiet_quantizer():
    # The quantiser logs one warning per tensor it cannot type (hundreds for Lite0's padding slices)
    # through the root logger; they are expected and say nothing about the result.
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------------
# Saved hybrid -> ONNX
# --------------------------------------------------------------------------------------------------


def _load_hybrid(model_dir):
    from allkit.hybrid import HybridClassifier

    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist; expected a folder written by "
                         "`allkit reproduce`/`allkit fit-hybrid` (HybridClassifier.save)")
    return HybridClassifier.load(folder, device="cpu", progress=False)


def _run_training_cells(model_dir: Path, progress: bool):
    """The training cells of the run a model folder belongs to (``runs/<name>/model``), or ``None``."""
    run_dir = model_dir.resolve().parent
    if not (run_dir / "metrics.json").is_file():
        return None
    from allkit.pipeline import load_run, rebuild_prepared

    prepared = rebuild_prepared(load_run(run_dir), progress=progress)
    return prepared.datasets.get("train")


def _cells_from_folder(hybrid, data, progress: bool):
    from allkit.pipeline import folder_cells

    return folder_cells(hybrid, data, allow_unknown_subjects=True, progress=progress)[1]


def export_saved_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    int8_mode: str = "static",
    calibration=None,
    n_calibration: int = 32,
    opset: int = DEFAULT_OPSET,
    check=None,
    threads: int | None = None,
    progress: bool = False,
) -> ExportResult:
    """Export the fine-tuned CNN of a saved hybrid folder (``HybridClassifier.save``) to ``out``.

    Writes ``out`` (fp32) + ``out.json``; with ``int8`` also ``<out stem>.int8.onnx`` + manifest
    (``int8_mode``: ``"static"``, calibrated on ``calibration``: a CellDataset, a C-NMC-layout folder, or
    ``None`` = the training cells of the run the folder belongs to, ``runs/<name>/model``; or ``"dynamic"``).
    If int8 quantisation fails, the fp32 model is still written and the reason is in ``int8_error``.
    ``check``: a dataset or data folder on which ONNX and PyTorch predictions are compared
    (:func:`check_against_pytorch`; results in ``checks``). The XGBoost stage is not exported: it stays
    in the folder's ``xgboost.json``.
    """
    folder = Path(model_dir)
    from allkit.pipeline import fitted_preprocessing

    hybrid = _load_hybrid(folder)
    size, crop = fitted_preprocessing(hybrid)
    path = export_onnx(hybrid.cnn_, hybrid.backbone, out, image_size=size, normalize=hybrid.normalize,
                       crop_ratio=crop, opset=opset, source=str(folder.resolve()))
    result = ExportResult(onnx=path, manifest=read_manifest(path))
    if int8:
        calib = calibration
        if int8_mode == "static":
            if calib is None:
                calib = _run_training_cells(folder, progress)
                if calib is None:
                    raise ModelError(f"static int8 needs calibration cells: {folder} is not inside a run folder "
                                     "(no ../metrics.json); pass calibration= / --calibration DATA (training cells)")
            elif isinstance(calib, (str, os.PathLike)):
                calib = _cells_from_folder(hybrid, calib, progress)
        try:
            result.int8 = quantize_onnx(path, mode=int8_mode, calibration=calib, n_calibration=n_calibration)
            result.int8_manifest = read_manifest(result.int8)
        except ModelError as err:
            result.int8_error = str(err)
    if check is not None:
        dataset = _cells_from_folder(hybrid, check, progress) if isinstance(check, (str, os.PathLike)) else check
        reference = _torch_proba(hybrid.cnn_, dataset, hybrid.normalize, progress=progress)
        for label, p in (("fp32", result.onnx), ("int8", result.int8)):
            if p is not None:
                result.checks[label] = check_against_pytorch(p, dataset, reference=reference, threads=threads,
                                                             progress=progress)
    return result


# --------------------------------------------------------------------------------------------------
# Agreement with PyTorch
# --------------------------------------------------------------------------------------------------


def _torch_proba(cnn: nn.Module, dataset, normalize, *, progress: bool = False) -> np.ndarray:
    from allkit.hybrid import cnn_predict_proba

    return cnn_predict_proba(cnn, dataset, normalize=normalize, device="cpu", progress=progress)


def check_against_pytorch(onnx_path, dataset, *, reference: np.ndarray | None = None, cnn: nn.Module | None = None,
                          normalize=True, threads: int | None = None, progress: bool = False) -> dict:
    """Compare an exported model with PyTorch on ``dataset``'s cells.

    ``reference``: PyTorch's probabilities (``(N, 2)``), or ``cnn`` + ``normalize`` to compute them.
    Returns ``n``, ``accuracy_pytorch``, ``accuracy_onnx`` (vs the labels), ``agreement`` (fraction of cells
    with the same predicted class), ``max_abs_diff`` and ``mean_abs_diff`` of ``p(ALL)``.
    """
    if reference is None:
        if cnn is None:
            raise ValueError("pass reference= (PyTorch probabilities) or cnn=")
        reference = _torch_proba(cnn, dataset, normalize, progress=progress)
    got = OnnxPredictor(onnx_path, threads=threads).predict_proba(dataset, progress=progress)
    labels = _dataset_labels(dataset)
    if got.shape != reference.shape:
        raise DataError(f"{len(got)} ONNX predictions vs {len(reference)} PyTorch ones")
    diff = np.abs(got[:, 1] - reference[:, 1])
    return {
        "n": len(got),
        "accuracy_pytorch": float((reference.argmax(1) == labels).mean()),
        "accuracy_onnx": float((got.argmax(1) == labels).mean()),
        "agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def measure_latency(fn: Callable[[], object], *, warmup: int = 5, runs: int = 50,
                    max_seconds: float | None = None, min_runs: int = 5) -> dict:
    """Wall-clock time of ``fn()``: ``warmup`` untimed calls, then ``runs`` timed ones (stopping early once
    ``max_seconds`` of timed calls have passed, but never before ``min_runs``). Milliseconds.

    With ``max_seconds``, warm-up also stops after one call once it has taken ``max_seconds / 4`` (a model
    that needs seconds per call is warm after one)."""
    if int(runs) < 1:
        raise ValueError(f"runs={runs!r}; expected a positive integer")
    warm_started = time.perf_counter()
    done_warmup = 0
    for _ in range(int(warmup)):
        fn()
        done_warmup += 1
        if max_seconds is not None and time.perf_counter() - warm_started > max_seconds / 4:
            break
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(int(runs)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= min_runs and time.perf_counter() - started > max_seconds:
            break
    ms = np.asarray(times) * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": len(ms), "warmup": done_warmup}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict:
    """What the latency numbers were measured on: CPU, cores, threads, load, library versions."""
    from allkit.perf import cpu_flags, default_num_threads, malloc_tuned

    flags = cpu_flags()
    facts = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": default_num_threads(),
        "int8_cpu_features": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                                             "amx_int8", "asimddp", "i8mm"}),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads_default": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned(),
        "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                                       "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        "versions": _versions(),
        "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        facts["onnxruntime_providers"] = _import_ort().get_available_providers()
    except MissingDependencyError:
        facts["onnxruntime_providers"] = None
    return facts


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _sample_input(test, image_size: int, n: int) -> np.ndarray:
    """``n`` real cells (repeated if needed) as float32 [0, 1], or seeded noise when no cells are given."""
    if test is not None and len(test) and getattr(getattr(test, "cache", None), "size", image_size) == image_size:
        idx = [i % len(test) for i in range(n)]
        return _dataset_pixels(test, idx).numpy().astype(np.float32) / 255.0
    return _dummy_input(image_size, n).numpy()


def _cache_key(settings: dict, models: Mapping) -> dict:
    key = dict(settings)
    key["models"] = {}
    for name, folder in sorted(models.items()):
        cnn = Path(folder) / "cnn.pt"
        key["models"][name] = sha256_file(cnn) if cnn.is_file() else str(folder)
    return key


def _report_model(name: str, model_dir, size: int):
    """``(cnn, normalize, weights note)``: the fine-tuned CNN of ``model_dir``, or a seeded random one."""
    from allkit.hybrid import HybridClassifier
    from allkit.models import build_model, get_spec

    if model_dir is not None:
        hybrid = HybridClassifier.load(model_dir, device="cpu", progress=False)
        model_size = int((hybrid.preprocessing_ or {}).get("size") or size)
        if model_size != size:
            raise ModelError(f"{model_dir} was trained at {model_size} px; the report measures {size} px")
        return hybrid.cnn_.eval(), hybrid.normalize, f"fine-tuned ({model_dir})"
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        cnn = build_model(name, None)
    return cnn.eval(), (spec.mean, spec.std), "random init (latency/size only)"


def _report_files(cnn, name, folder: Path, size, normalize, weights, int8_modes, calibration, n_calibration,
                  notes: list) -> dict[str, Path | None]:
    """The fp32 export and its int8 copies (``None`` where quantising failed, with a note); no file at all if
    the export itself failed (e.g. VGG16's 7x7 adaptive pooling below 224 px: PyTorch rows only)."""
    try:
        paths = {"onnx_fp32": export_onnx(cnn, name, folder / f"{name}.onnx", image_size=size, normalize=normalize,
                                          source=weights)}
    except ModelError as err:
        notes.append(f"{name}: ONNX export failed at {size} px, so only PyTorch was measured: {err}")
        return {}
    for mode in int8_modes:
        variant = f"onnx_int8_{mode}"
        try:
            paths[variant] = quantize_onnx(paths["onnx_fp32"], folder / f"{name}.int8-{mode}.onnx", mode=mode,
                                           calibration=calibration, n_calibration=n_calibration)
        except ModelError as err:
            paths[variant] = None
            notes.append(f"{name}: int8 {mode} failed: {err}")
    return paths


def _report_accuracy(cnn, normalize, paths: Mapping, test, threads: int) -> dict[str, dict]:
    """Accuracy on ``test``, agreement with PyTorch and max |Δp(ALL)| of PyTorch and every exported file."""
    reference = _torch_proba(cnn, test, normalize)
    labels = _dataset_labels(test)
    accuracy = {"pytorch": {"accuracy": float((reference.argmax(1) == labels).mean()), "agreement": 1.0,
                            "max_abs_dp": 0.0, "n": len(labels)}}
    for variant, p in paths.items():
        if p is not None:
            check = check_against_pytorch(p, test, reference=reference, threads=threads)
            accuracy[variant] = {"accuracy": check["accuracy_onnx"], "agreement": check["agreement"],
                                 "max_abs_dp": check["max_abs_diff"], "n": check["n"]}
    return accuracy


def _report_timing(model, threads: int, one: np.ndarray, many: np.ndarray, *, measure_batch: bool, warmup: int,
                   runs: int, max_seconds: float, batch_runs: int) -> tuple[dict, dict | None]:
    """Batch-1 latency and (``measure_batch``) the time of a ``many`` batch, of a PyTorch module or an ``.onnx``."""
    def timed(run, x1, xb):
        lat = measure_latency(lambda: run(x1), warmup=warmup, runs=runs, max_seconds=max_seconds)
        thr = measure_latency(lambda: run(xb), warmup=1, runs=batch_runs, min_runs=1) if measure_batch else None
        return lat, thr

    if isinstance(model, nn.Module):
        from allkit.perf import torch_threads

        with torch_threads(threads), torch.inference_mode():
            return timed(model, torch.from_numpy(one), torch.from_numpy(many))
    return timed(OnnxPredictor(model, threads=threads).run, one, many)


def deployment_report(
    backbones: Iterable[str] = DEPLOY_BACKBONES,
    *,
    image_size: int = 224,
    models: Mapping[str, str | os.PathLike] | None = None,
    test=None,
    calibration=None,
    n_calibration: int = 32,
    threads: Sequence[int | None] = (1, None),
    runs: int = 50,
    warmup: int = 5,
    max_seconds: float = 20.0,
    batch: int = 32,
    batch_runs: int = 3,
    int8_modes: Sequence[str] = INT8_MODES,
    throughput_backbones: Iterable[str] | None = None,
    throughput_variants: Iterable[str] = ("pytorch", "onnx_fp32", "onnx_int8_static"),
    out_dir: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    note: str | None = None,
    progress: bool = True,
) -> dict:
    """Size, CPU latency, throughput and accuracy change of PyTorch fp32 vs ONNX Runtime fp32 vs int8.

    Per backbone: the fine-tuned model of ``models[name]`` (a saved hybrid folder) when given, else a
    randomly initialised one (latency and size do not depend on the weights' values; accuracy is then
    reported as ``"n/a (no fine-tuned model offline)"``). Each is exported (:func:`export_onnx`) and
    quantised in each of ``int8_modes`` (static: calibrated on ``n_calibration`` cells of ``calibration``,
    training cells; noise if none is given, which the notes say). Then for every variant and every entry
    of ``threads`` (``None``: all usable cores): batch-1 latency (median and p90 over up to ``runs`` timed
    calls after ``warmup``, at most ``max_seconds`` each) on a real cell of ``test`` when given, and
    throughput at ``batch`` cells (``batch_runs`` timed batches) for the ``throughput_backbones`` (default
    all) and ``throughput_variants`` (dynamic int8, several times slower, only at batch 1 by default).
    With ``test`` and a fine-tuned model: accuracy, agreement with PyTorch and max |Δp(ALL)| of each
    variant on all of ``test`` (all cores). PyTorch runs eager, fp32, batch norm folded (as allkit's own
    inference), ``torch.inference_mode``.

    ``cache``: a JSON path; a report there made with the same settings and models is returned as is, else
    the new one is written there (atomically). Returns a JSON-serialisable dict: ``machine``, ``settings``,
    ``rows`` (one per backbone x variant x threads; see :func:`report_table`), ``notes``.
    """
    from allkit.models import get_spec
    from allkit.perf import optimize_for_inference, tune_malloc

    _import_ort()
    _import_onnx()
    models = {get_spec(k).name: v for k, v in (models or {}).items()}
    backbones = [get_spec(b).name for b in backbones]
    size = _check_image_size(image_size)
    usable = _default_threads()
    thread_list = sorted({usable if t is None else int(t) for t in threads})
    throughput_variants = set(throughput_variants)
    throughput_set = set(backbones if throughput_backbones is None else (get_spec(b).name for b in throughput_backbones))
    for mode in int8_modes:
        if mode not in INT8_MODES:
            raise ModelError(f"int8 mode {mode!r}; expected one of {', '.join(INT8_MODES)}")
    settings = {"backbones": backbones, "image_size": size, "threads": thread_list, "runs": int(runs),
                "warmup": int(warmup), "max_seconds": float(max_seconds), "batch": int(batch),
                "batch_runs": int(batch_runs), "int8_modes": list(int8_modes), "n_calibration": int(n_calibration),
                "throughput_backbones": sorted(throughput_set), "throughput_variants": sorted(throughput_variants),
                "test_cells": None if test is None else len(test),
                "note": note}
    key = _cache_key(settings, models)
    if cache is not None and Path(cache).is_file():
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(Path(cache).read_text())
            if saved.get("key") == key:
                return saved["report"]

    tune_malloc()  # as allkit's own CPU inference does: PyTorch is measured the way allkit runs it
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    notes = []
    if note:
        notes.append(note)
    calib_note = None
    if calibration is None and "static" in int8_modes:
        calibration = (np.random.default_rng(SEED).integers(0, 256, (n_calibration, 3, size, size))
                       .astype(np.uint8))
        calib_note = "static int8 calibrated on random noise (no calibration cells given)"
        notes.append(calib_note)
    rows: list[dict] = []
    workdir = tempfile.TemporaryDirectory(prefix="allkit-deploy-") if out_dir is None else None
    folder = Path(workdir.name if workdir else out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    one = _sample_input(test, size, 1)
    many = _sample_input(test, size, int(batch))
    timing = {"warmup": warmup, "runs": runs, "max_seconds": max_seconds, "batch_runs": batch_runs}
    try:
        from tqdm.auto import tqdm

        bar = tqdm(backbones, desc="backbones", disable=not progress)
        for name in bar:
            bar.set_postfix_str(name)
            cnn, normalize, weights = _report_model(name, models.get(name), size)
            fine_tuned = name in models
            paths = _report_files(cnn, name, folder, size, normalize, weights, int8_modes, calibration,
                                  n_calibration, notes)
            accuracy = _report_accuracy(cnn, normalize, paths, test, usable) if fine_tuned and test is not None else {}
            torch_model = DeployableModel(optimize_for_inference(cnn), normalize).eval()
            pt_bytes = sum(t.numel() * t.element_size() for t in cnn.state_dict().values())
            for variant, p in [("pytorch", None), *((v, p) for v, p in paths.items() if p is not None)]:
                measure_batch = name in throughput_set and variant in throughput_variants
                for n_threads in thread_list:
                    lat, thr = _report_timing(torch_model if p is None else p, n_threads, one, many,
                                              measure_batch=measure_batch, **timing)
                    acc = accuracy.get(variant)
                    rows.append({
                        "backbone": name, "weights": weights, "variant": variant,
                        "precision": "int8" if "int8" in variant else "fp32", "threads": n_threads,
                        "image_size": size, "size_mb": pt_bytes / 1e6 if p is None else _mb(p),
                        "size_of": "state_dict tensors" if p is None else p.name,
                        "latency_median_ms": lat["median_ms"], "latency_p90_ms": lat["p90_ms"],
                        "latency_runs": lat["runs"],
                        "throughput_cells_s": None if thr is None else batch * 1000.0 / thr["median_ms"],
                        "throughput_runs": None if thr is None else thr["runs"],
                        "accuracy": acc["accuracy"] if acc else None,
                        "agreement_with_pytorch": acc["agreement"] if acc else None,
                        "max_abs_dp": acc["max_abs_dp"] if acc else None,
                        "accuracy_cells": acc["n"] if acc else None,
                        "accuracy_note": None if acc else (NO_FINETUNED if not fine_tuned else "no test cells given"),
                    })
    finally:
        if workdir is not None:
            workdir.cleanup()
    report = {"machine": machine_facts(), "settings": settings, "rows": rows, "notes": notes,
              "scope": SCOPE, "calibration": calib_note or "training cells given by the caller"}
    report["machine"]["load_average_at_start"] = load_at_start  # machine_facts' own is at the end
    if cache is not None:
        write_json(cache, {"key": key, "report": report}, indent=2)
    return report


def report_table(report: Mapping):
    """The report's rows as a pandas DataFrame (one row per backbone x variant x threads)."""
    import pandas as pd

    columns = ["backbone", "weights", "variant", "threads", "size_mb", "latency_median_ms", "latency_p90_ms",
               "latency_runs", "throughput_cells_s", "accuracy", "agreement_with_pytorch", "max_abs_dp",
               "accuracy_note"]
    frame = pd.DataFrame(list(report["rows"]))
    return frame[[c for c in columns if c in frame.columns]]


def summary_table(report: Mapping):
    """One row per backbone x variant, thread counts side by side: what the book and the script print.

    Columns: ``size_mb``; per thread count ``t``: ``ms_median_<t>t``, ``ms_p90_<t>t`` (batch 1, per cell) and
    ``cells_s_<t>t`` (throughput at the report's batch size); ``accuracy``, ``agreement``, ``max_abs_dp``
    (on the test cells, fine-tuned models only) and ``weights``.
    """
    import pandas as pd

    frame = pd.DataFrame(list(report["rows"]))
    out = []
    for (backbone, variant), group in frame.groupby(["backbone", "variant"], sort=False):
        first = group.iloc[0]
        row = {"backbone": backbone, "variant": variant, "size_mb": first["size_mb"]}
        for _, r in group.iterrows():
            t = int(r["threads"])
            row[f"ms_median_{t}t"] = r["latency_median_ms"]
            row[f"ms_p90_{t}t"] = r["latency_p90_ms"]
            row[f"cells_s_{t}t"] = r["throughput_cells_s"]
        row.update(accuracy=first["accuracy"] if first["accuracy"] is not None else first["accuracy_note"],
                   agreement=first["agreement_with_pytorch"], max_abs_dp=first["max_abs_dp"],
                   weights=first["weights"])
        out.append(row)
    return pd.DataFrame(out)


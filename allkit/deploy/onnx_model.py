"""The fine-tuned CNN as an ONNX file with a manifest, and what the rest of allkit.deploy shares about it.

The graph takes what a deployment has: float32 NCHW RGB in ``[0, 1]`` (the cached uint8 pixels / 255, i.e.
after the centre crop and resize of :func:`allkit.data.decode_cell`), applies the model's normalisation
(:func:`allkit.transforms.to_model_input`: ImageNet statistics, none, or a backbone's own ``(mean, std)``),
runs the CNN and returns the softmax ``[HEM, ALL]``, for any batch size; with ``cam=True`` also each class's
activation map (``cam``, below). Every ``.onnx`` gets a JSON
manifest next to it (``model.onnx.json``: backbone, image size, crop ratio, normalisation, class names,
opset, sha256 of the ``.onnx``, library versions, source).

onnx and onnxruntime are optional (``pip install 'allkit[onnx]'``): they are imported when first needed,
and their absence raises :class:`MissingDependencyError` with that hint.

**Class activation maps.** For a network whose head is one linear layer on globally average-pooled feature
maps ``A`` (EfficientNet, ResNet, Inception; not VGG), class ``c``'s score is the mean over positions of
``CAM_c = sum_k W[c, k] A_k`` plus a bias. Grad-CAM at that layer weighs ``A_k`` by the mean gradient of the
score, which is ``W[c, k] / (h w)``: after its ReLU and min-max scaling, Grad-CAM *is* the CAM. So the map
can be one more output of the same graph (no gradients at run time), which is what the book's in-browser
demo shows; :func:`cam_heatmap` scales and resizes it as pytorch-grad-cam does.
"""

import contextlib
import copy
import importlib
import inspect
import io
import platform
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

import allkit
from allkit.constants import CLASS_NAMES, CLASS_TO_LABEL, CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, SEED
from allkit.data import CellDataset
from allkit.errors import AllkitError, ConfigError, DataError, ModelError
from allkit.files import atomic_file, read_json, sha256_file, write_json
from allkit.models import get_backbone, head
from allkit.transforms import mean_std, to_model_input

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "ONNX_INSTALL_HINT",
    "OUTPUT_NAME",
    "CAM_NAME",
    "DeployableModel",
    "cam_heatmap",
    "MissingDependencyError",
    "check_cells",
    "export_onnx",
    "manifest_path",
    "read_manifest",
]

ONNX_INSTALL_HINT = "pip install 'allkit[onnx]'"
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
CAM_NAME = "cam"
MANIFEST_FORMAT = "allkit.onnx"
MANIFEST_VERSION = 1
SCOPE = (
    "the fine-tuned CNN alone (softmax over [HEM, ALL]), one view per cell; the hybrid's XGBoost stage is "
    "not in this graph and stays in XGBoost's JSON format (xgboost.json of the model folder), and "
    "test-time augmentation, if the saved model uses it, is not applied"
)


class MissingDependencyError(AllkitError, ImportError):
    """An optional package (onnx, onnxruntime) is not installed."""


def optional_module(name: str, purpose: str):
    """The optional package (or submodule) ``name``, or :class:`MissingDependencyError` with the install hint."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the {name.split('.')[0]!r} package: install with {ONNX_INSTALL_HINT}"
        ) from err


def import_onnx():
    return optional_module("onnx", "exporting to ONNX")


def import_onnxruntime():
    return optional_module("onnxruntime", "running or quantising ONNX models")


def library_versions() -> dict:
    versions = {"allkit": allkit.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime"):
        try:
            versions[name] = optional_module(name, "").__version__
        except MissingDependencyError:
            versions[name] = None
    return versions


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def random_input(image_size: int, batch: int = 2) -> np.ndarray:
    """Seeded float32 noise ``[batch, 3, S, S]`` in ``[0, 1]``: what an export is checked on."""
    return torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(SEED)).numpy()


def cpu_session(model, threads: int | None):
    """An onnxruntime ``InferenceSession`` on the CPU for ``model`` (a path or the bytes of a graph), with
    ``threads`` intra-op threads (``None``: onnxruntime's default), run sequentially, logging errors only."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: quantised graphs log benign warnings at load
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_cells(dataset: CellDataset, size: int | None, crop_ratio: float | None, expected_by: str) -> None:
    """Refuse cells cached at another size or crop ratio than a model was made for (``None``: not checked):
    it would get other pixels than it knows and answer without complaint. ``expected_by`` completes
    "but ... with"."""
    if not isinstance(dataset, CellDataset):
        raise DataError(f"expected a CellDataset of cached cells, got {type(dataset).__name__}")
    for name, want, got in (("size", size, dataset.cache.size), ("crop_ratio", crop_ratio, dataset.cache.crop_ratio)):
        if want is not None and abs(float(want) - float(got)) > 1e-6:
            raise DataError(
                f"the dataset's cells are cached with {name}={got}, but {expected_by} with {name}={want}; "
                f"rebuild the cache with build_cache(..., {name}={want})"
            )


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


class DeployableModel(nn.Module):
    """float32 NCHW in ``[0, 1]`` -> :func:`allkit.transforms.to_model_input` (the model's normalisation)
    -> CNN -> softmax ``[HEM, ALL]``: the exported graph needs nothing from allkit at run time. ``model`` is
    used as given (put it in eval mode, where it returns its logits). With ``cam_layer`` (the module whose
    output is pooled into the features) and ``head`` (the final linear layer), the forward pass also returns
    the class activation maps ``[B, classes, h, w]`` of that layer (see the module's docstring)."""

    def __init__(self, model: nn.Module, normalize=True, cam_layer: nn.Module | None = None, head=None):
        super().__init__()
        self.model = model
        self.stats = mean_std(normalize)
        self.cam_layer, self.head = cam_layer, head

    def forward(self, x: torch.Tensor):
        x = to_model_input(x, self.stats)
        if self.cam_layer is None:
            return torch.softmax(self.model(x), dim=1)
        seen = []
        hook = self.cam_layer.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        maps = torch.einsum("kc,bchw->bkhw", self.head.weight, seen[-1])
        return torch.softmax(logits, dim=1), maps


def cam_heatmap(cam: np.ndarray, size: int) -> np.ndarray:
    """One class's activation map ``[h, w]`` drawn as Grad-CAM draws its map (pytorch-grad-cam's own
    ``scale_cam_image``, twice as ``GradCAM`` does): the positive part scaled to [0, 1], resized bilinearly
    to ``size`` x ``size`` (OpenCV), scaled to [0, 1] again. The book's demo page computes the same in
    JavaScript."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    positive = np.maximum(np.asarray(cam, np.float32), 0)[None]
    return scale_cam_image(scale_cam_image(positive, (size, size)))[0]


def cam_parts(model: nn.Module, backbone, image_size: int) -> tuple[nn.Module, nn.Linear]:
    """The Grad-CAM layer and the linear head of ``model``, checked to form a pooled-linear pair (see the
    module's docstring): :class:`ModelError` for a network where the CAM would not be exact."""
    spec = get_backbone(backbone)
    try:
        layer = model.get_submodule(spec.gradcam_layer)
    except AttributeError as err:
        raise ModelError(
            f"the model has no layer {spec.gradcam_layer!r}: not a {spec.name} built by build_model"
        ) from err
    linear = head(model, spec.name)
    with torch.inference_mode():
        probe = DeployableModel(model, False, layer, linear)
        x = torch.from_numpy(random_input(image_size, 1))
        try:
            _, maps = probe(x)
            pooled = maps.mean((2, 3)) + linear.bias
            exact = maps.shape[1] == linear.out_features and torch.allclose(pooled, model(x), rtol=1e-4, atol=1e-4)
        except RuntimeError:
            exact = False
    if not exact:
        raise ModelError(
            f"a class activation map is exact only for a linear head on average-pooled maps; the {spec.name}'s "
            f"head {spec.head!r} is not that on {spec.gradcam_layer!r}: export without cam"
        )
    return layer, linear


def manifest_path(onnx_path) -> Path:
    """The manifest written next to an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(onnx_path)
    return path.with_name(path.name + ".json")


def normalization_record(normalize) -> dict:
    stats = mean_std(normalize)
    if stats is None:
        return {"in_graph": False, "kind": "none ([0, 1] as is)", "mean": None, "std": None}
    kind = "imagenet" if (tuple(stats[0]), tuple(stats[1])) == (IMAGENET_MEAN, IMAGENET_STD) else "custom"
    return {"in_graph": True, "kind": kind, "mean": list(stats[0]), "std": list(stats[1])}


def check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ConfigError(f"image_size={image_size!r}; expected an integer number of pixels >= 8")
    return int(image_size)


def write_onnx(path: Path, data: bytes, manifest: dict) -> dict:
    """Write the graph ``data`` to ``path`` and ``manifest`` (completed with file name, sha256, size,
    versions and time) to :func:`manifest_path`, each atomically. Returns the manifest."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    manifest = {
        **manifest,
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": len(data),
        "versions": library_versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path(path), manifest, indent=2)
    return manifest


def _torch_to_onnx_bytes(wrapper: nn.Module, dummy: torch.Tensor, opset: int, outputs: list) -> bytes:
    # The TorchScript exporter (dynamo=False) rather than torch 2.9+'s default torch.export-based one: it
    # needs no extra package (the dynamo exporter needs onnxscript), exports every backbone here
    # (EfficientNet-Lite0's static padding, Inception's branches) with a plain dynamic batch axis via
    # dynamic_axes, and folds batch norm into the convolutions in eval mode. It is deprecated upstream:
    # its warnings are silenced here, and the export is checked numerically against PyTorch right after.
    buffer = io.BytesIO()
    # torch < 2.5 has only the TorchScript exporter and no `dynamo` argument
    choice = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    # torch prints the whole TorchScript graph when an export fails: the error itself is reported instead
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (dummy,),
            buffer,
            **choice,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def export_onnx(
    model: nn.Module,
    backbone: str,
    path,
    *,
    image_size: int = 224,
    normalize=True,
    crop_ratio: float = CROP_RATIO,
    opset: int = DEFAULT_OPSET,
    source: str | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
    cam: bool = False,
) -> Path:
    """Export the 2-class ``model`` (a ``backbone`` from :func:`allkit.models.build_model`) to ``path``.

    The graph: input ``image`` float32 ``[batch, 3, image_size, image_size]`` in ``[0, 1]`` -> ``normalize``
    (``True``: ImageNet statistics, ``False``: none, or a ``(mean, std)`` pair) -> CNN -> softmax; output
    ``probabilities`` ``[batch, 2]`` = ``[HEM, ALL]``. ``crop_ratio`` is not in the graph (cropping happens
    when cells are decoded) but is recorded in the manifest. The model itself is not touched (a CPU copy is
    exported). With ``verify`` (and onnxruntime installed) the file is run once on random input and must
    agree with PyTorch within ``tolerance`` (max absolute difference of probabilities), else
    :class:`ModelError`. Returns the path of the ``.onnx``. The XGBoost stage of a hybrid is not exported.
    ``cam``: a second output ``cam`` ``[batch, 2, h, w]``, each class's activation map at the backbone's
    Grad-CAM layer (:func:`cam_heatmap` draws one; :class:`ModelError` where it would not be exact).
    """
    onnx = import_onnx()
    name = get_backbone(backbone).name
    size = check_image_size(image_size)
    if not 0.0 < float(crop_ratio) <= 1.0:
        raise ConfigError(f"crop_ratio={crop_ratio!r}; expected a fraction in (0, 1]")
    n_out = head(model, name).out_features
    if n_out != len(CLASS_NAMES):
        raise ModelError(
            f"the {name} has a {n_out}-output head; export_onnx expects a fine-tuned "
            f"{len(CLASS_NAMES)}-class model ({', '.join(CLASS_NAMES)})"
        )
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a directory; expected the path of the .onnx file to write")
    try:  # a copy, so that exporting never moves the caller's model off its device or out of train mode
        cnn = copy.deepcopy(model).to("cpu", torch.float32).eval()
    except Exception as err:  # hooks holding un-copyable objects, meta tensors, ...
        raise ModelError(f"cannot copy the {type(model).__name__} for export: {err}") from err
    wrapper = DeployableModel(cnn, normalize, *(cam_parts(cnn, name, size) if cam else ())).eval()
    outputs = [OUTPUT_NAME, CAM_NAME] if cam else [OUTPUT_NAME]
    dummy = torch.from_numpy(random_input(size))
    try:
        data = _torch_to_onnx_bytes(wrapper, dummy, opset, outputs)
    except Exception as err:
        raise ModelError(
            f"torch.onnx.export failed for {name} at {size} px (opset {opset}): {first_line(err)}"
        ) from err
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as err:
        raise ModelError(f"the exported {name} graph fails onnx.checker: {err}") from err
    if verify:
        try:
            got = cpu_session(data, 1).run(None, {INPUT_NAME: dummy.numpy()})[0]
        except MissingDependencyError:
            got = None
        if got is not None:
            with torch.inference_mode():
                want = wrapper(dummy)
                diff = float(np.abs(got - (want[0] if cam else want).numpy()).max())
            if not diff <= tolerance:
                raise ModelError(
                    f"the exported {name} disagrees with PyTorch: max |Δp| = {diff:.2e} > {tolerance:.0e} on random input"
                )
    manifest = {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "precision": "fp32",
        "quantization": None,
        "backbone": name,
        "image_size": size,
        "crop_ratio": float(crop_ratio),
        "normalization": normalization_record(normalize),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", 3, size, size],
            "range": [0.0, 1.0],
            "preprocessing": f"RGB, centre crop of crop_ratio x the shorter side, resized to {size} px, "
            "uint8 / 255 (normalisation is inside the graph)",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(CLASS_NAMES)], "kind": "softmax probabilities"},
        "cam": {
            "name": CAM_NAME,
            "layer": get_backbone(name).gradcam_layer,
            "shape": ["batch", len(CLASS_NAMES), "h", "w"],
            "kind": "class activation maps (head weights x the layer's maps; Grad-CAM there after ReLU and scaling)",
        }
        if cam
        else None,
        "class_names": list(CLASS_NAMES),
        "class_mapping": dict(CLASS_TO_LABEL),
        "opset": int(opset),
        "exporter": "torch.onnx.export (TorchScript exporter, dynamo=False)",
        "scope": SCOPE,
        "source": None if source is None else str(source),
    }
    write_onnx(path, data, manifest)
    return path


def read_manifest(onnx_path, *, check_sha: bool = True) -> dict:
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
        raise ModelError(
            f"{mpath} has manifest_version {manifest.get('manifest_version')!r}; this allkit reads {MANIFEST_VERSION}"
        )
    if manifest.get("class_mapping") != dict(CLASS_TO_LABEL):
        raise ModelError(
            f"{mpath} has class mapping {manifest.get('class_mapping')!r}; expected {dict(CLASS_TO_LABEL)!r}"
        )
    if check_sha:
        actual = sha256_file(path)
        if actual != manifest.get("sha256"):
            raise ModelError(
                f"{path} does not match its manifest {mpath.name}: sha256 {actual[:16]}..., manifest says "
                f"{str(manifest.get('sha256'))[:16]}... (file modified or the manifest belongs to another model)"
            )
    return manifest

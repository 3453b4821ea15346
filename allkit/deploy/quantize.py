"""int8 copies of an exported model (ONNX Runtime's quantisation tools).

* ``"static"`` (the default): QDQ format, int8 weights (per channel) and uint8 activations whose ranges are
  calibrated (MinMax) on a few training cells. Convolutions then run as integer kernels.
* ``"dynamic"``: int8 weights, activations quantised at run time (no calibration). ONNX Runtime runs the
  quantised convolutions as ``ConvInteger``, which has no fast CPU kernel: on this project's four CNNs it
  was measured 3-9x *slower* than fp32 (benchmarks/deploy.py), and its fidelity varies (p(ALL) moved by up
  to 0.2-0.5 depending on model and cells). It is offered to show that, not to deploy.
* ``"weights"``: the convolutions' and the head's weights stored as int8 (symmetric, per output channel)
  behind a ``DequantizeLinear``, the arithmetic fp32. The file is as small as the static one, and every ONNX
  Runtime build computes the same numbers: integer kernels round differently from one build to another (the
  book's in-browser demo measured one step of the last layer's uint8 output moving its heatmap by 1%).
"""

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from allkit.constants import CLASS_NAMES, SEED
from allkit.data import CellDataset
from allkit.deploy.onnx_model import (
    INPUT_NAME,
    check_cells,
    cpu_session,
    first_line,
    import_onnx,
    import_onnxruntime,
    optional_module,
    random_input,
    read_manifest,
    write_onnx,
)
from allkit.errors import ConfigError, DataError, ModelError

__all__ = ["INT8_MODES", "calibration_batch", "quantize_onnx"]

INT8_MODES = ("static", "dynamic", "weights")


def check_int8_mode(mode: str) -> str:
    if mode not in INT8_MODES:
        raise ConfigError(f"int8 mode {mode!r}; expected one of {', '.join(INT8_MODES)}")
    return mode


def calibration_batch(calibration, n: int, manifest: dict, seed: int = SEED) -> tuple[np.ndarray, str]:
    """float32 ``[n, 3, S, S]`` in ``[0, 1]`` for the exported model of ``manifest``, and what it holds:
    from a :class:`~allkit.data.CellDataset` (a seeded pick, round-robin over the classes) or the first
    ``n`` of a uint8 (or ``[0, 1]`` float) NCHW array."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n_calibration={n!r}; expected a positive number of cells")
    image_size = int(manifest["image_size"])
    if calibration is None:
        raise ModelError(
            "static int8 quantisation needs calibration cells (a few training cells); pass "
            "calibration= (a CellDataset or uint8 NCHW array) or use mode='dynamic'"
        )
    if isinstance(calibration, (np.ndarray, torch.Tensor)):
        array = calibration.numpy() if isinstance(calibration, torch.Tensor) else calibration
        if array.ndim != 4 or array.shape[1:] != (3, image_size, image_size):
            raise DataError(f"calibration images must be [N, 3, {image_size}, {image_size}], got {tuple(array.shape)}")
        array = array[:n]
        what = f"{len(array)} given images"
    else:
        check_cells(calibration, image_size, manifest["crop_ratio"], f"{manifest['file']} was exported for cells")
        rng = np.random.default_rng(seed)
        labels = calibration.labels.numpy()
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        picked = []
        for i in range(max((len(p) for p in per_class), default=0)):  # round-robin over the classes
            picked += [int(p[i]) for p in per_class if i < len(p)]
        picked = sorted(picked[:n])
        if not picked:
            raise DataError("the calibration dataset holds no cells")
        array = calibration.__getitems__(picked)[0].numpy()
        counts = {CLASS_NAMES[c]: int((labels[picked] == c).sum()) for c in np.unique(labels)}
        what = f"{len(picked)} cells ({', '.join(f'{v} {k}' for k, v in counts.items())}), seeded pick"
    if len(array) == 0:
        raise DataError("no calibration images given")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    return np.ascontiguousarray(array, dtype=np.float32), what


@contextlib.contextmanager
def _quiet_quantizer():
    # The quantiser logs one warning per tensor it cannot type (hundreds for Lite0's padding slices)
    # through the root logger; they are expected and say nothing about the result.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _without_unused_opsets(path: Path) -> bytes:
    """The graph at ``path`` importing only the operator domains its nodes use: ONNX Runtime's pre-processing
    declares all of its own (``com.microsoft.nchwc``, ``ai.onnx.ml`` 5, ...), and an older runtime such as
    the book's onnxruntime-web refuses a model that names a domain version it does not know."""
    onnx = import_onnx()
    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [onnx.helper.make_opsetid(o.domain, o.version) for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model.SerializeToString()


def _weights_only(src: Path, dst: Path, per_channel: bool) -> None:
    """``src`` with every Conv and Gemm weight stored as int8 behind a ``DequantizeLinear`` (``"weights"`` mode)."""
    onnx = import_onnx()
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    dequantize, done = [], set()
    for node in graph.node:
        name = node.input[1] if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 else None
        if name not in initializers or name in done:
            continue
        done.add(name)
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        transposed = node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        axis = 1 if transposed else 0  # the output channels
        reduce = tuple(i for i in range(weight.ndim) if i != axis) if per_channel else None
        scale = np.abs(weight).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [-1 if i == axis else 1 for i in range(weight.ndim)] if per_channel else []
        quantised = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantised, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero"),
            ]
        )
        extra = {"axis": axis} if per_channel else {}
        dequantize.append(
            onnx.helper.make_node(
                "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [name], **extra
            )
        )
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequantize + nodes)  # before every node that reads them
    onnx.save(model, str(dst))


def _quantize(pre: Path, out: Path, mode: str, manifest: dict, calibration, n: int, seed: int, per_channel: bool):
    """Write the int8 graph of ``pre`` to ``out``; returns the quantisation record of the manifest."""
    quant = optional_module("onnxruntime.quantization", "int8 quantisation")
    if mode == "weights":
        _weights_only(pre, out, per_channel)
        return {
            "format": "QDQ weights only (DequantizeLinear before each Conv and Gemm; fp32 arithmetic)",
            "activations": "float32 (not quantised)",
            "calibration": None,
        }
    if mode == "dynamic":
        quant.quantize_dynamic(str(pre), str(out), weight_type=quant.QuantType.QInt8, per_channel=per_channel)
        return {
            "format": "QOperator (dynamic: activations quantised at run time)",
            "activations": "uint8, range computed per batch at run time",
            "calibration": None,
        }
    batch, what = calibration_batch(calibration, n, manifest, seed)

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.items = iter(batch[i : i + 1] for i in range(len(batch)))

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {INPUT_NAME: item}

    # The softmax stays float: quantised to uint8, the probabilities would come in steps of 1/255 (p(ALL)
    # never above 0.996 and small differences between cells lost)
    keep_float = [n.name for n in import_onnx().load(str(pre)).graph.node if n.op_type == "Softmax"]
    quant.quantize_static(
        str(pre),
        str(out),
        Reader(),
        nodes_to_exclude=keep_float,
        quant_format=quant.QuantFormat.QDQ,
        activation_type=quant.QuantType.QUInt8,
        weight_type=quant.QuantType.QInt8,
        per_channel=per_channel,
        calibrate_method=quant.CalibrationMethod.MinMax,
    )
    return {
        "format": "QDQ (static)",
        "activations": "uint8, MinMax-calibrated",
        "calibration": what,
        "calibrate_method": "MinMax",
    }


def quantize_onnx(
    src,
    dst=None,
    *,
    mode: str = "static",
    calibration=None,
    n_calibration: int = 32,
    seed: int = SEED,
    per_channel: bool = True,
) -> Path:
    """int8 copy of an exported fp32 model (``dst`` default: ``model.int8.onnx`` next to ``src``), with manifest.

    ``mode="static"``: QDQ, int8 per-channel weights, uint8 activations calibrated (MinMax) on
    ``n_calibration`` cells of ``calibration`` (a :class:`~allkit.data.CellDataset` or uint8 NCHW array;
    pick them from the training cells, never the test cells). ``mode="dynamic"``: int8 weights, activations
    quantised at run time, no calibration. ``mode="weights"``: int8 weights, fp32 arithmetic (the module's docstring says when). All start
    from ONNX Runtime's ``quant_pre_process`` (shape inference, graph optimisation).
    The result must load and run in onnxruntime, else :class:`ModelError` says that it does not (nothing is
    written then).
    """
    ort = import_onnxruntime()
    import_onnx()
    shape_inference = optional_module("onnxruntime.quantization.shape_inference", "int8 quantisation")
    check_int8_mode(mode)
    src = Path(src)
    manifest = read_manifest(src)
    if manifest.get("precision") != "fp32":
        raise ModelError(f"{src} is already {manifest.get('precision')}; quantise the fp32 export")
    if mode == "static" and not isinstance(calibration, (np.ndarray, torch.Tensor, CellDataset, type(None))):
        raise DataError(f"calibration must be a CellDataset or a uint8 NCHW array, got {type(calibration).__name__}")
    dst = Path(dst) if dst is not None else src.with_name(src.name.removesuffix(".onnx") + ".int8.onnx")
    with tempfile.TemporaryDirectory(prefix=".allkit-quant-", dir=dst.parent if dst.parent.is_dir() else None) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        with _quiet_quantizer():
            try:
                shape_inference.quant_pre_process(str(src), str(pre))
                preprocessed = True
            except Exception:  # symbolic shape inference can fail on exotic graphs: quantise the raw graph
                pre, preprocessed = src, False
            try:
                record = _quantize(pre, out, mode, manifest, calibration, n_calibration, seed, per_channel)
            except (ModelError, DataError, ConfigError):
                raise
            except Exception as err:
                raise ModelError(
                    f"int8 ({mode}) quantisation of {src} failed in onnxruntime {ort.__version__}: {first_line(err)}"
                ) from err
        try:  # a quantised graph that onnxruntime cannot run is reported, not shipped
            probe = cpu_session(out, 1).run(None, {INPUT_NAME: random_input(int(manifest["image_size"]), 1)})[0]
        except Exception as err:
            raise ModelError(
                f"the int8 ({mode}) model of {src.name} does not run in onnxruntime {ort.__version__}: {first_line(err)}"
            ) from err
        if probe.shape != (1, len(CLASS_NAMES)) or not np.all(np.isfinite(probe)):
            raise ModelError(f"the int8 ({mode}) model of {src.name} gives invalid output {probe!r}")
        data = _without_unused_opsets(out)
    record = {
        "mode": mode,
        "tool": f"onnxruntime.quantization {ort.__version__}",
        "pre_process": preprocessed,
        "per_channel": bool(per_channel),
        "weights": "int8",
        **record,
    }
    int8_manifest = {
        **manifest,
        "precision": "int8",
        "quantization": record,
        "source": f"{src.name} (sha256 {manifest['sha256']}), from {manifest.get('source')}",
    }
    write_onnx(dst, data, int8_manifest)
    return dst

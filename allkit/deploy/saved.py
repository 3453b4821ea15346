"""A saved hybrid folder (``HybridClassifier.save``) -> its fine-tuned CNN as ONNX (fp32, optionally int8)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from allkit.constants import CROP_RATIO, IMAGE_SIZE
from allkit.deploy.onnx_model import DEFAULT_OPSET, check_cells, export_onnx, read_manifest
from allkit.deploy.predictor import check_against_pytorch
from allkit.deploy.quantize import check_int8_mode, quantize_onnx
from allkit.errors import ModelError
from allkit.files import refuse_overlap
from allkit.hybrid import HybridClassifier
from allkit.inference import predict_proba

__all__ = ["ExportResult", "export_saved_model", "fitted_cells", "load_hybrid"]
# Finding cells (a data folder, the run a model belongs to) is the study layer's: `allkit export` passes datasets.


@dataclass
class ExportResult:
    """What :func:`export_saved_model` wrote: the fp32 model, and the int8 one when asked (``None`` if not)."""

    onnx: Path
    manifest: dict
    int8: Path | None = None
    int8_manifest: dict | None = None
    int8_error: str | None = None
    checks: dict = field(default_factory=dict)


def load_hybrid(model_dir) -> HybridClassifier:
    """The saved hybrid of ``model_dir`` on the CPU, with a message naming the folder if there is none."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(
            f"model folder {folder} does not exist; expected a folder written by "
            "`allkit reproduce`/`allkit fit-hybrid` (HybridClassifier.save)"
        )
    return HybridClassifier.load(folder, device="cpu", progress=False)


def fitted_cells(hybrid: HybridClassifier) -> tuple[int, float]:
    """Image size and crop ratio of the cells ``hybrid`` was fitted on (its ``preprocessing_``; the
    defaults, 224 px and the paper's crop, when it was fitted on feature arrays and does not know)."""
    pre = getattr(hybrid, "preprocessing_", None) or {}
    return int(pre.get("size") or IMAGE_SIZE), float(pre.get("crop_ratio") or CROP_RATIO)


def export_saved_model(
    model_dir,
    out,
    *,
    int8: bool = False,
    int8_mode: str = "static",
    calibration=None,
    n_calibration: int = 32,
    opset: int = DEFAULT_OPSET,
    check=None,
    threads: int | None = None,
    progress: bool = False,
    cam: bool = False,
) -> ExportResult:
    """Export the fine-tuned CNN of a saved hybrid folder (``HybridClassifier.save``) to ``out``.

    Writes ``out`` (fp32) + ``out.json``; with ``int8`` also ``<out stem>.int8.onnx`` + manifest
    (``int8_mode``: ``"static"``, calibrated on ``calibration``, a CellDataset of training cells or a uint8
    array; or ``"dynamic"``). If int8 quantisation fails, the fp32 model is still written and the reason is in
    ``int8_error``. ``check``: a CellDataset on which ONNX and PyTorch predictions are compared
    (:func:`check_against_pytorch`; results in ``checks``). The XGBoost stage is not exported: it stays
    in the folder's ``xgboost.json``. ``cam``: the graphs also output each class's activation map
    (:func:`~allkit.deploy.onnx_model.export_onnx`).
    """
    folder = Path(model_dir)
    refuse_overlap(out, {"the model folder": folder})  # e.g. --out MODEL/cnn.pt would replace the weights
    if int8:
        check_int8_mode(int8_mode)
    hybrid = load_hybrid(folder)
    size, crop = fitted_cells(hybrid)
    path = export_onnx(
        hybrid.cnn,
        hybrid.backbone_,
        out,
        image_size=size,
        normalize=hybrid.normalize,
        crop_ratio=crop,
        opset=opset,
        source=str(folder.resolve()),
        cam=cam,
    )
    result = ExportResult(onnx=path, manifest=read_manifest(path))
    if int8:
        calib = calibration
        if int8_mode == "static":
            if calib is None or isinstance(calib, (str, os.PathLike)):
                raise ModelError(
                    "static int8 needs calibration cells: pass calibration= a CellDataset of training cells "
                    "(`allkit export --calibration DATA` makes one from a folder, or from the run MODEL belongs to)"
                )
        try:
            result.int8 = quantize_onnx(path, mode=int8_mode, calibration=calib, n_calibration=n_calibration)
            result.int8_manifest = read_manifest(result.int8)
        except ModelError as err:
            result.int8_error = str(err)
    if check is not None:
        if isinstance(check, (str, os.PathLike)):
            raise ModelError("check= takes a CellDataset (`allkit export --check DATA` makes one from a folder)")
        dataset = check
        check_cells(dataset, size, crop, f"{folder} was fitted on cells")
        reference = predict_proba(hybrid.cnn, dataset, normalize=hybrid.normalize, device="cpu", progress=progress)
        for label, p in (("fp32", result.onnx), ("int8", result.int8)):
            if p is not None:
                result.checks[label] = check_against_pytorch(
                    p, dataset, reference=reference, threads=threads, progress=progress
                )
    return result

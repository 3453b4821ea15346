"""Low-power deployment, measured: the fine-tuned CNN as an ONNX file, int8 quantisation, CPU latency.

The paper argues that its model suits the weak computers of small hospitals but never measures it. This
package turns a fine-tuned CNN into what such a machine would run, and measures it::

    from allkit.deploy import export_saved_model, OnnxPredictor, deployment_report

    result = export_saved_model("runs/sample/model", "model.onnx", int8=True)   # + model.int8.onnx
    predictor = OnnxPredictor("model.onnx", threads=1)                          # onnxruntime, CPU
    proba = predictor.predict_proba(test_dataset)                               # (N, 2): [HEM, ALL]
    report = deployment_report(["efficientnet_lite0", "resnet18"], image_size=224, ...)

What is exported: the fine-tuned CNN **alone** (its 2-class head, softmax probabilities ``[HEM, ALL]``).
The hybrid's XGBoost stage is not part of the ONNX graph: it stays in XGBoost's own JSON format
(``xgboost.json`` of the model folder), which XGBoost loads on any machine.

- :mod:`~allkit.deploy.onnx_model`: :func:`export_onnx` (graph + manifest), :func:`read_manifest`,
  :class:`DeployableModel`, :func:`cam_heatmap` (a class activation map drawn as Grad-CAM draws it), :class:`MissingDependencyError`;
- :mod:`~allkit.deploy.predictor`: :class:`OnnxPredictor` (ONNX Runtime, CPU), :func:`check_against_pytorch`;
- :mod:`~allkit.deploy.quantize`: :func:`quantize_onnx` (int8, static or dynamic);
- :mod:`~allkit.deploy.saved`: :func:`export_saved_model` (a saved hybrid folder -> ONNX, ``allkit export``);
- :mod:`~allkit.deploy.report`: :func:`deployment_report` (size, latency, throughput, accuracy per backbone).

Errors: missing packages raise :class:`MissingDependencyError` (``pip install 'allkit[onnx]'``); a bad
model folder, an unreadable ``.onnx``, a manifest that does not match its file raise
:class:`~allkit.errors.ModelError`, cells cached for another model :class:`~allkit.errors.DataError`, each
naming the file or value.
"""

from allkit.deploy.onnx_model import (
    CAM_NAME,
    DEFAULT_OPSET,
    INPUT_NAME,
    ONNX_INSTALL_HINT,
    OUTPUT_NAME,
    DeployableModel,
    MissingDependencyError,
    cam_heatmap,
    check_cells,
    export_onnx,
    manifest_path,
    read_manifest,
)
from allkit.deploy.predictor import OnnxPredictor, check_against_pytorch
from allkit.deploy.quantize import INT8_MODES, calibration_batch, quantize_onnx
from allkit.deploy.report import (
    DEPLOY_BACKBONES,
    NO_FINETUNED,
    deployment_report,
    machine_facts,
    measure_latency,
    report_table,
    summary_table,
)
from allkit.deploy.saved import ExportResult, export_saved_model

__all__ = [
    "CAM_NAME",
    "DEFAULT_OPSET",
    "DEPLOY_BACKBONES",
    "INPUT_NAME",
    "INT8_MODES",
    "NO_FINETUNED",
    "ONNX_INSTALL_HINT",
    "OUTPUT_NAME",
    "DeployableModel",
    "ExportResult",
    "MissingDependencyError",
    "OnnxPredictor",
    "calibration_batch",
    "cam_heatmap",
    "check_against_pytorch",
    "check_cells",
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

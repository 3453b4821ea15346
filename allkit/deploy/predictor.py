"""An exported model run by ONNX Runtime on the CPU, and compared with PyTorch on the same cells."""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from allkit.constants import CLASS_NAMES
from allkit.data import CellDataset
from allkit.deploy.onnx_model import (
    CAM_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    check_cells,
    cpu_session,
    first_line,
    import_onnxruntime,
    read_manifest,
)
from allkit.errors import ConfigError, DataError, ModelError
from allkit.inference import predict_proba

__all__ = ["OnnxPredictor", "check_against_pytorch"]


class OnnxPredictor:
    """An exported model run by ONNX Runtime on the CPU (``CPUExecutionProvider``).

    ``threads``: intra-op threads (``None``: as many as torch uses, which allkit's entry points set to the
    CPUs this process may use, :func:`allkit.perf.configure_threads`; 1 imitates a weak machine).
    The manifest is read and its sha256 checked against the file first (``verify``). :meth:`predict_proba`
    takes uint8 NCHW cells (as cached, 0-255), float NCHW in ``[0, 1]``, or a :class:`~allkit.data.CellDataset`
    cached at the model's image size and crop ratio.
    """

    def __init__(self, path, *, threads: int | None = None, verify: bool = True):
        import_onnxruntime()
        self.path = Path(path)
        self.manifest = read_manifest(self.path, check_sha=verify)
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ConfigError(f"threads={threads!r}; expected a positive integer or None")
        self.threads = torch.get_num_threads() if threads is None else int(threads)
        try:
            self.session = cpu_session(self.path, self.threads)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise ModelError(f"{self.path} is not a readable ONNX model ({first_line(err)})") from err
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape) if inputs else []
        size = self.image_size
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(shape) != 4 or shape[1:] != [3, size, size]:
            raise ModelError(
                f"{self.path} takes {[(i.name, i.shape) for i in inputs]}, but its manifest "
                f"says one input {INPUT_NAME!r} of shape [batch, 3, {size}, {size}]"
            )

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
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def class_activation_maps(self, images) -> np.ndarray:
        """The ``cam`` output ``(N, 2, h, w)`` of a model exported with ``cam=True`` (uint8 or [0, 1] NCHW cells;
        :func:`~allkit.deploy.onnx_model.cam_heatmap` draws one), :class:`ModelError` for a model without it."""
        if not self.manifest.get("cam"):
            raise ModelError(f"{self.path.name} has no class activation map output; export it with cam=True")
        return self.session.run([CAM_NAME], {INPUT_NAME: self._as_input(images)})[0]

    def _as_input(self, images) -> np.ndarray:
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim == 3:
            array = array[None]
        size = self.image_size
        if array.ndim != 4 or array.shape[1:] != (3, size, size):
            raise DataError(
                f"{self.path.name} expects images of shape [B, 3, {size}, {size}] (NCHW), got {tuple(array.shape)}"
            )
        if array.dtype == np.uint8:
            return array.astype(np.float32) * np.float32(1.0 / 255.0)
        if not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{self.path.name} expects uint8 or float images, got dtype {array.dtype}")
        array = array.astype(np.float32, copy=False)
        if array.size and (array.min() < -1e-3 or array.max() > 1.0 + 1e-3):
            raise DataError(
                f"float images must be in [0, 1] (normalisation is inside the graph), got values in "
                f"[{array.min():.3g}, {array.max():.3g}]"
            )
        return np.ascontiguousarray(array)

    def predict_proba(self, images, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Probabilities ``(N, 2)`` (``[HEM, ALL]``) for an array/tensor of cells or a dataset of cells."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}; expected a positive integer")
        if isinstance(images, (np.ndarray, torch.Tensor)):
            x = self._as_input(images)
            if not len(x):
                return np.zeros((0, len(CLASS_NAMES)), np.float32)
            return np.concatenate([self.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        check_cells(images, self.image_size, self.crop_ratio, f"{self.path.name} was exported for cells")
        if not len(images):
            raise DataError("cannot predict an empty dataset (0 cells)")
        outputs = []
        for start in tqdm(range(0, len(images), batch_size), desc=f"ONNX {self.precision}", disable=not progress):
            pixels = images.__getitems__(range(start, min(start + batch_size, len(images))))[0]
            outputs.append(self.run(self._as_input(pixels)))
        return np.concatenate(outputs)

    def predict(self, images, **kwargs) -> np.ndarray:
        """Predicted labels (HEM = 0, ALL = 1)."""
        return self.predict_proba(images, **kwargs).argmax(axis=1)


def check_against_pytorch(
    onnx_path,
    dataset: CellDataset,
    *,
    reference: np.ndarray | None = None,
    cnn: nn.Module | None = None,
    normalize=True,
    threads: int | None = None,
    progress: bool = False,
) -> dict:
    """Compare an exported model with PyTorch on ``dataset``'s cells.

    ``reference``: PyTorch's probabilities (``(N, 2)``), or ``cnn`` + ``normalize`` to compute them
    (:func:`allkit.inference.predict_proba` on the CPU). Returns ``n``, ``accuracy_pytorch``,
    ``accuracy_onnx`` (vs the labels), ``agreement`` (fraction of cells with the same predicted class),
    ``max_abs_diff`` and ``mean_abs_diff`` of ``p(ALL)``.
    """
    predictor = OnnxPredictor(onnx_path, threads=threads)
    if reference is None:
        if cnn is None:
            raise ConfigError("pass reference= (PyTorch probabilities) or cnn=")
        check_cells(
            dataset, predictor.image_size, predictor.crop_ratio, f"{predictor.path.name} was exported for cells"
        )
        reference = predict_proba(cnn, dataset, normalize=normalize, device="cpu", progress=progress)
    got = predictor.predict_proba(dataset, progress=progress)
    labels = dataset.labels.numpy()
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

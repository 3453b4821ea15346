"""allkit.explain: Grad-CAM heatmaps, targets, hooks/mode hygiene, files and saved overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from allkit.errors import DataError, ModelError
from allkit.explain import GradCamResult, gradcam, gradcam_files, save_overlays


class BrightSpot(nn.Module):
    """Logit 1 = global average of a channel that fires on bright pixels; logit 0 = its negative.

    Input is un-normalised [0, 1] (use ``normalize=False``). Returns ``(logits, aux)`` in train mode,
    like Inception-v3, so Grad-CAM only works if the model is put in eval mode.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27.0)
            self.conv.bias.fill_(-0.5)
        self.act = nn.ReLU()
        self.aux = nn.Identity()

    def forward(self, x):
        score = self.act(self.conv(x)).mean(dim=(1, 2, 3))
        logits = torch.stack([-score, score], dim=1)
        return (logits, self.aux(logits)) if self.training else logits


def _square(corner: str, size=(32, 32), side=8) -> np.ndarray:
    img = np.zeros((*size, 3), np.uint8)
    h, w = size
    r = slice(2, 2 + side) if corner[0] == "t" else slice(h - 2 - side, h - 2)
    c = slice(2, 2 + side) if corner[1] == "l" else slice(w - 2 - side, w - 2)
    img[r, c] = 255
    return img


@pytest.fixture(scope="module")
def resnet():
    from allkit.models import build_model

    torch.manual_seed(0)
    return build_model("resnet18", weights=None).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=g)


def _no_hooks(layer: nn.Module) -> bool:
    return not layer._forward_hooks and not layer._backward_hooks and not layer._forward_pre_hooks


# --------------------------------------------------------------------------------------------------
# shapes, ranges, targets
# --------------------------------------------------------------------------------------------------


def test_shapes_and_ranges(resnet, batch):
    res = gradcam(resnet, "resnet18", batch, target="predicted")
    assert isinstance(res, GradCamResult) and len(res) == 3
    assert res.heatmaps.shape == (3, 64, 64) and res.heatmaps.dtype == np.float32
    assert res.heatmaps.min() >= 0.0 and res.heatmaps.max() <= 1.0 and np.isfinite(res.heatmaps).all()
    assert res.images.shape == (3, 64, 64, 3) and res.images.dtype == np.uint8
    np.testing.assert_array_equal(res.images, batch.permute(0, 2, 3, 1).numpy())  # un-normalised
    assert res.probabilities.shape == (3, 2)
    np.testing.assert_allclose(res.probabilities.sum(1), 1.0, rtol=1e-5)
    assert res.predictions == list(res.probabilities.argmax(1))
    assert res.targets == res.predictions  # "predicted"
    ov = res.overlays()
    assert ov.shape == (3, 64, 64, 3) and ov.dtype == np.uint8


def test_target_resolution(resnet, batch):
    labels = torch.tensor([1, 0, 1])
    assert gradcam(resnet, "resnet18", batch, target="true", labels=labels).targets == [1, 0, 1]
    assert gradcam(resnet, "resnet18", batch, target="ALL").targets == [1, 1, 1]
    assert gradcam(resnet, "resnet18", batch, target="hem").targets == [0, 0, 0]
    assert gradcam(resnet, "resnet18", batch, target=1).targets == [1, 1, 1]
    mixed = gradcam(resnet, "resnet18", batch, target=[0, "ALL", "predicted"])
    assert mixed.targets == [0, 1, mixed.predictions[2]]


def test_input_layouts(resnet, batch):
    one = gradcam(resnet, "resnet18", batch[0])  # [3, H, W]
    hwc = gradcam(resnet, "resnet18", batch[0].permute(1, 2, 0).numpy())  # HxWx3 array
    listed = gradcam(resnet, "resnet18", [b.permute(1, 2, 0).numpy() for b in batch[:2]])
    assert one.heatmaps.shape == hwc.heatmaps.shape == (1, 64, 64)
    np.testing.assert_allclose(one.heatmaps, hwc.heatmaps, atol=1e-5)
    assert listed.heatmaps.shape == (2, 64, 64)
    rect = gradcam(BrightSpot(), None, _square("tl", size=(40, 56)), layer="act", normalize=False)
    assert rect.heatmaps.shape == (1, 40, 56)  # non-square input: HxW kept


def test_true_without_labels_is_refused(resnet, batch):
    with pytest.raises(DataError, match="labels"):
        gradcam(resnet, "resnet18", batch, target="true")
    with pytest.raises(DataError, match="one per image"):
        gradcam(resnet, "resnet18", batch, target="true", labels=[1, 0])
    with pytest.raises(DataError, match="not understood"):
        gradcam(resnet, "resnet18", batch, target="cancer")


def test_target_out_of_range_is_refused_and_hooks_released(resnet, batch):
    layer = resnet.layer4[-1]
    with pytest.raises(ModelError, match="2 outputs"):
        gradcam(resnet, "resnet18", batch, target=2)
    assert _no_hooks(layer)
    with pytest.raises(ModelError, match="negative"):
        gradcam(resnet, "resnet18", batch, target=-1)


def test_imagenet_class_on_1000_class_model(batch):
    """The authors' pitfall: CAM for ImageNet class 181 on a 1000-way head is allowed, 1000 is not."""
    from allkit.models import build_model

    model = build_model("resnet18", weights=None, num_classes=1000).eval()
    res = gradcam(model, "resnet18", batch[:1], target=181)
    assert res.targets == [181] and res.probabilities.shape == (1, 1000)
    with pytest.raises(ModelError, match="1000 outputs"):
        gradcam(model, "resnet18", batch[:1], target=1000)
    with pytest.warns(UserWarning, match="1000 outputs"):
        gradcam(model, "resnet18", batch[:1], target="ALL")


# --------------------------------------------------------------------------------------------------
# CAM localises; hooks and modes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corner", ["tl", "tr", "bl", "br"])
def test_heatmap_peaks_on_the_bright_square(corner):
    model = BrightSpot()
    res = gradcam(model, None, _square(corner), target="ALL", layer=model.act, normalize=False)
    heat = res.heatmaps[0]
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert (r < 16) == (corner[0] == "t") and (c < 16) == (corner[1] == "l")
    assert heat.max() == pytest.approx(1.0, abs=1e-4)
    opposite = heat[16:, :] if corner[0] == "t" else heat[:16, :]
    opposite = opposite[:, 16:] if corner[1] == "l" else opposite[:, :16]
    assert opposite.max() == 0.0  # nothing far from the square
    # class 0 (HEM) is the negative of the bright evidence: Grad-CAM's ReLU leaves nothing
    hem = gradcam(model, None, _square(corner), target="HEM", layer=model.act, normalize=False)
    assert hem.heatmaps.max() == 0


def test_hooks_released_and_modes_restored():
    model = BrightSpot()
    model.train()
    model.aux.eval()  # mixed modes must come back exactly
    res = gradcam(model, None, _square("tl"), target=1, layer="act", normalize=False)
    assert res.targets == [1] and res.predictions == [1]
    assert model.training and model.conv.training and not model.aux.training
    assert _no_hooks(model.act) and _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    gradcam(model, None, _square("tl"), layer=model.act, normalize=False)
    assert not model.training


def test_frozen_model_and_no_grad_context():
    model = BrightSpot().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        res = gradcam(model, None, _square("br"), target="ALL", layer=model.act, normalize=False)
    assert res.heatmaps[0, 24, 24] == pytest.approx(1.0, abs=0.05)
    assert all(not p.requires_grad for p in model.parameters())


def test_bad_layer_and_method(resnet, batch):
    with pytest.raises(ModelError, match="not a submodule"):
        gradcam(resnet, "resnet18", batch, layer=nn.ReLU())
    with pytest.raises(ModelError, match="method"):
        gradcam(resnet, "resnet18", batch, method="magic")
    with pytest.raises(ModelError, match="backbone"):
        gradcam(resnet, None, batch)


# --------------------------------------------------------------------------------------------------
# files, saving, plotting
# --------------------------------------------------------------------------------------------------


def test_gradcam_files(tmp_path, resnet):
    paths = []
    for i in range(2):
        rgb = np.random.default_rng(i).integers(0, 256, (90, 90, 3), dtype=np.uint8)
        path = tmp_path / f"cell_{i}.bmp"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    res = gradcam_files(resnet, "resnet18", paths, size=64, labels=[0, 1], target="true")
    assert res.heatmaps.shape == (2, 64, 64) and res.names == ["cell_0", "cell_1"] and res.targets == [0, 1]

    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="nope.png"):
        gradcam_files(resnet, "resnet18", [paths[0], missing], size=64)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(DataError, match="broken.png"):
        gradcam_files(resnet, "resnet18", [broken], size=64)


def test_save_overlays(tmp_path, resnet, batch):
    res = gradcam(resnet, "resnet18", batch, target="true", labels=[0, 1, 1])
    out = save_overlays(res, tmp_path / "out", names=["a", "b", "a"])
    assert [p.name for p in out] == ["a_gradcam.png", "b_gradcam.png", "a_1_gradcam.png"]
    for i, path in enumerate(out):
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.size == (128, 64) and im.mode == "RGB"
            assert im.text["allkit.target"] == str(res.targets[i])
            arr = np.asarray(im)
        np.testing.assert_array_equal(arr[:, :64], res.images[i])  # left: the original
        np.testing.assert_array_equal(arr[:, 64:], res.overlays()[i])  # right: the overlay
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == sorted(p.name for p in out)  # no temporary files left behind
    default = save_overlays(res, tmp_path / "d")
    assert [p.name for p in default] == [f"image_{i:03d}_gradcam.png" for i in range(3)]
    with pytest.raises(DataError, match="names"):
        save_overlays(res, tmp_path / "x", names=["a"])


def test_plot(resnet, batch):
    import matplotlib.pyplot as plt

    res = gradcam(resnet, "resnet18", batch[:2], target="true", labels=[0, 1])
    fig = res.plot()
    assert len(fig.axes) == 4
    plt.close(fig)
    unlabeled = gradcam(resnet, "resnet18", batch[:2])
    with pytest.raises(DataError, match="labels"):
        unlabeled.plot()
    plt.close(unlabeled.plot(labels=[1, 0]))

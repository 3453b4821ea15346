"""allkit.explain (Grad-CAM heatmaps, targets, hooks/mode hygiene) and the study's Grad-CAM files
(allkit.study.heatmaps: image files in, PNG panels out)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from allkit.constants import CROP_RATIO
from allkit.errors import ConfigError, DataError, ModelError
from allkit.explain import GradCamResult, gradcam
from allkit.hybrid import HybridClassifier
from allkit.models import build_model
from allkit.study.heatmaps import gradcam_files, save_overlays


class BrightSpot(nn.Module):
    """Logit 1 = global average of a channel that fires on bright pixels; logit 0 = its negative.

    The channel's activation sits where a ResNet's Grad-CAM layer is (``layer4.1``), so ``gradcam(model,
    "resnet18", ...)`` explains it. Input is un-normalised [0, 1] (use ``normalize=False``). Returns
    ``(logits, aux)`` in train mode, like Inception-v3, so Grad-CAM only works if the model is put in eval mode.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel_size=3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27.0)
            self.conv.bias.fill_(-0.5)
        self.layer4 = nn.Sequential(nn.Identity(), nn.ReLU())
        self.aux = nn.Identity()

    def forward(self, x):
        score = self.layer4(self.conv(x)).mean(dim=(1, 2, 3))
        logits = torch.stack([-score, score], dim=1)
        return (logits, self.aux(logits)) if self.training else logits


def _square(corner: str, size=(32, 32), side=8) -> torch.Tensor:
    """A black uint8 batch of one image [1, 3, H, W] with a white square near ``corner``."""
    img = np.zeros((*size, 3), np.uint8)
    h, w = size
    r = slice(2, 2 + side) if corner[0] == "t" else slice(h - 2 - side, h - 2)
    c = slice(2, 2 + side) if corner[1] == "l" else slice(w - 2 - side, w - 2)
    img[r, c] = 255
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def resnet():
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
    assert res.labels is None
    ov = res.overlays()
    assert ov.shape == (3, 64, 64, 3) and ov.dtype == np.uint8
    assert not np.array_equal(ov, res.images)
    np.testing.assert_array_equal(res.overlays(image_weight=1.0), res.images)


def test_probabilities_are_the_models_and_batches_do_not_matter(resnet, batch):
    res = gradcam(resnet, "resnet18", batch, batch_size=2)
    whole = gradcam(resnet, "resnet18", batch)
    np.testing.assert_allclose(res.heatmaps, whole.heatmaps, atol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(
            resnet(
                (batch.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
                / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
            ),
            1,
        )
    np.testing.assert_allclose(res.probabilities, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_target_resolution(resnet, batch):
    labels = torch.tensor([1, 0, 1])
    true = gradcam(resnet, "resnet18", batch, target="true", labels=labels)
    assert true.targets == [1, 0, 1] and true.labels == [1, 0, 1]
    assert gradcam(resnet, "resnet18", batch, target="ALL").targets == [1, 1, 1]
    assert gradcam(resnet, "resnet18", batch, target="hem").targets == [0, 0, 0]
    assert gradcam(resnet, "resnet18", batch, target=1).targets == [1, 1, 1]
    mixed = gradcam(resnet, "resnet18", batch, target=[0, "ALL", "predicted"])
    assert mixed.targets == [0, 1, mixed.predictions[2]]
    # another target, another map
    assert not np.allclose(
        gradcam(resnet, "resnet18", batch[:1], target=0).heatmaps,
        gradcam(resnet, "resnet18", batch[:1], target=1).heatmaps,
    )


def test_non_square_images_keep_their_size():
    rect = gradcam(BrightSpot(), "resnet18", _square("tl", size=(40, 56)), normalize=False)
    assert rect.heatmaps.shape == (1, 40, 56) and rect.images.shape == (1, 40, 56, 3)


def test_inputs_that_are_not_a_uint8_batch_are_refused(resnet, batch):
    for bad in (batch[0], batch.float(), batch.permute(0, 2, 3, 1)):
        with pytest.raises(ConfigError, match=r"expected uint8 images \[B, 3, H, W\]"):
            gradcam(resnet, "resnet18", bad)


def test_bad_targets_are_refused(resnet, batch):
    with pytest.raises(ConfigError, match="labels"):
        gradcam(resnet, "resnet18", batch, target="true")
    with pytest.raises(ConfigError, match="one per image"):
        gradcam(resnet, "resnet18", batch, target=[0, 1])
    with pytest.raises(ConfigError, match="target 'cancer'"):
        gradcam(resnet, "resnet18", batch, target="cancer")
    with pytest.raises(ModelError, match="backbone"):
        gradcam(resnet, None, batch)


def test_true_targets_need_one_label_per_image(resnet, batch):
    with pytest.raises(ConfigError, match="one per image"):
        gradcam(resnet, "resnet18", batch, target="true", labels=[1, 0])


def test_target_out_of_range_is_refused_and_hooks_released(resnet, batch):
    layer = resnet.layer4[-1]
    with pytest.raises(ConfigError, match="outside the model's classes"):
        gradcam(resnet, "resnet18", batch, target=2)
    assert _no_hooks(layer) and _no_hooks(resnet)
    with pytest.raises(ConfigError, match="outside the model's classes"):
        gradcam(resnet, "resnet18", batch, target=[0, 0, 2], batch_size=2)  # in the second batch only


def test_negative_target_is_refused(resnet, batch):
    with pytest.raises(ConfigError):
        gradcam(resnet, "resnet18", batch, target=-1)


def test_model_of_another_backbone_is_refused(resnet, batch):
    with pytest.raises(ModelError, match="efficientnet_b0"):
        gradcam(resnet, "efficientnet_b0", batch)


def test_imagenet_class_on_1000_class_model(batch):
    """The authors' pitfall: CAM for ImageNet class 181 on a 1000-way head is allowed, 1000 is not."""
    model = build_model("resnet18", weights=None, num_classes=1000).eval()
    res = gradcam(model, "resnet18", batch[:1], target=181)
    assert res.targets == [181] and res.probabilities.shape == (1, 1000)


def test_class_names_on_a_1000_class_model_warn(batch):
    model = build_model("resnet18", weights=None, num_classes=1000).eval()
    with pytest.warns(UserWarning, match="1000 outputs"):
        gradcam(model, "resnet18", batch[:1], target="ALL")


# --------------------------------------------------------------------------------------------------
# CAM localises; hooks and modes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corner", ["tl", "tr", "bl", "br"])
def test_heatmap_peaks_on_the_bright_square(corner):
    model = BrightSpot()
    res = gradcam(model, "resnet18", _square(corner), target="ALL", normalize=False)
    heat = res.heatmaps[0]
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert (r < 16) == (corner[0] == "t") and (c < 16) == (corner[1] == "l")
    assert heat.max() == pytest.approx(1.0, abs=1e-4)
    opposite = heat[16:, :] if corner[0] == "t" else heat[:16, :]
    opposite = opposite[:, 16:] if corner[1] == "l" else opposite[:, :16]
    assert opposite.max() == 0.0  # nothing far from the square
    # class 0 (HEM) is the negative of the bright evidence: Grad-CAM's ReLU leaves nothing
    hem = gradcam(model, "resnet18", _square(corner), target="HEM", normalize=False)
    assert hem.heatmaps.max() == 0


def test_hooks_released_and_modes_restored():
    model = BrightSpot()
    model.train()
    res = gradcam(model, "resnet18", _square("tl"), target=1, normalize=False)
    assert res.targets == [1] and res.predictions == [1]
    assert model.training and model.conv.training
    assert _no_hooks(model.layer4[1]) and _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    gradcam(model, "resnet18", _square("tl"), normalize=False)
    assert not model.training and not model.conv.training


def test_mixed_modes_are_restored_exactly():
    model = BrightSpot()
    model.train()
    model.aux.eval()
    gradcam(model, "resnet18", _square("tl"), target=1, normalize=False)
    assert model.training and not model.aux.training


def test_frozen_model():
    model = BrightSpot().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    res = gradcam(model, "resnet18", _square("br"), target="ALL", normalize=False)
    assert res.heatmaps[0, 24, 24] == pytest.approx(1.0, abs=0.05)
    assert all(not p.requires_grad for p in model.parameters())


def test_gradcam_inside_no_grad():
    model = BrightSpot().eval()
    with torch.no_grad():
        res = gradcam(model, "resnet18", _square("br"), target="ALL", normalize=False)
    assert res.heatmaps[0, 24, 24] == pytest.approx(1.0, abs=0.05)


# --------------------------------------------------------------------------------------------------
# allkit.study.heatmaps: files in, PNG panels out
# --------------------------------------------------------------------------------------------------


def _hybrid(resnet, size=64) -> HybridClassifier:
    """What gradcam_files reads of a fitted hybrid: its CNN, backbone, normalisation and cache geometry."""
    hybrid = HybridClassifier(cnn=resnet, backbone="resnet18")
    hybrid.preprocessing_ = {"size": size, "crop_ratio": round(CROP_RATIO, 6)}
    return hybrid


def test_gradcam_files(tmp_path, resnet):
    paths = []
    for i in range(2):
        rgb = np.random.default_rng(i).integers(0, 256, (90, 90, 3), dtype=np.uint8)
        path = tmp_path / f"cell_{i}.bmp"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    res = gradcam_files(_hybrid(resnet), paths, target="ALL")
    assert res.heatmaps.shape == (2, 64, 64) and res.targets == [1, 1]
    expected = gradcam(resnet, "resnet18", res.images.transpose(0, 3, 1, 2).copy(), target="ALL")
    np.testing.assert_allclose(res.heatmaps, expected.heatmaps, atol=1e-5)

    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="nope.png"):
        gradcam_files(_hybrid(resnet), [paths[0], missing])
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(DataError, match="broken.png"):
        gradcam_files(_hybrid(resnet), [broken])
    with pytest.raises(DataError, match="no image files"):
        gradcam_files(_hybrid(resnet), [])


def test_save_overlays(tmp_path, resnet, batch):
    res = gradcam(resnet, "resnet18", batch, target="true", labels=[0, 1, 1])
    out = save_overlays(res, ["a", "b", "a"], tmp_path / "out")
    assert [p.name for p in out] == ["a_gradcam.png", "b_gradcam.png", "a_1_gradcam.png"]
    for i, path in enumerate(out):
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.size == (128, 64) and im.mode == "RGB"
            assert im.text["allkit.target"] == str(res.targets[i])
            assert im.text["allkit.predicted"] == str(res.predictions[i])
            arr = np.asarray(im)
        np.testing.assert_array_equal(arr[:, :64], res.images[i])  # left: the original
        np.testing.assert_array_equal(arr[:, 64:], res.overlays()[i])  # right: the overlay
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == sorted(p.name for p in out)  # no temporary files left behind


def test_save_overlays_needs_one_name_per_image(tmp_path, resnet, batch):
    res = gradcam(resnet, "resnet18", batch)
    with pytest.raises(DataError, match="names"):
        save_overlays(res, ["a"], tmp_path / "x")
    assert not (tmp_path / "x").exists() or list((tmp_path / "x").iterdir()) == []

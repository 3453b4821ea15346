"""allkit.transforms (and the cache's decoding, allkit.data.decode_cell): the paper's pipelines, the one
normalisation parser, the batched augmentation and the 8 exact dihedral views."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from allkit.constants import (
    CROP_RATIO,
    CROP_SIZE,
    FLIP_PROBABILITY,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ORIGINAL_SIZE,
    ROTATION_DEGREES,
)
from allkit.data import decode_cell, to_rgb
from allkit.errors import ConfigError, DataError
from allkit.study.book import describe_pipeline
from allkit.transforms import (
    BatchAugment,
    denormalize,
    dihedral,
    eval_transform,
    mean_std,
    to_model_input,
    train_transform,
)


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth, asymmetric image: different in every flip and rotation."""
    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    green = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    blue = ((x * x + 3 * y) % 256).astype(np.uint8)
    return np.stack([red, green, blue], axis=-1)


def _asymmetric_batch(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    """n distinct uint8 images none of which is invariant under a flip."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _draws(augment: BatchAugment, n: int, seed: int) -> tuple[list, list, list]:
    """The per-cell flips and angles ``augment`` draws from ``torch.Generator().manual_seed(seed)``: as its
    documentation says, a horizontal flip, then a vertical flip, then an angle uniform in [-deg, deg]."""
    g = torch.Generator().manual_seed(seed)
    hflip = torch.rand(n, generator=g) < augment.p_hflip
    vflip = torch.rand(n, generator=g) < augment.p_vflip
    angle = (torch.rand(n, generator=g) * 2 - 1) * augment.degrees
    return hflip.tolist(), vflip.tolist(), angle.tolist()


# ---------------------------------------------------------------------------------------------- decode_cell


def test_crop_ratio_constant():
    assert CROP_RATIO == CROP_SIZE / ORIGINAL_SIZE == 448 / 450


def test_decode_450_equals_centercrop_then_resize():
    image = Image.fromarray(_random_rgb(450, 450))
    out = decode_cell(image)
    expected = v2.Compose([v2.CenterCrop(CROP_SIZE), v2.Resize(IMAGE_SIZE), v2.ToImage()])(image)
    assert out.dtype == np.uint8 and out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.array_equal(out, expected.permute(1, 2, 0).numpy())


def test_decode_other_sizes_scale_the_crop():
    array = _random_rgb(300, 300, seed=2)
    out = decode_cell(Image.fromarray(array), size=64)
    assert out.shape == (64, 64, 3)
    # 448/450 * 300 = 298.67 -> 299
    expected = v2.Compose([v2.CenterCrop(299), v2.Resize(64), v2.ToImage()])(Image.fromarray(array))
    assert np.array_equal(out, expected.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("height,width", [(450, 600), (600, 450), (97, 61)])
def test_decode_non_square(height, width):
    array = _random_rgb(height, width, seed=3)
    side = round(CROP_RATIO * min(height, width))
    out = decode_cell(Image.fromarray(array), size=32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    expected = v2.Compose([v2.CenterCrop(side), v2.Resize(32), v2.ToImage()])(Image.fromarray(array))
    assert np.array_equal(out, expected.permute(1, 2, 0).numpy())


def test_decode_shape_and_path(tmp_path):
    array = _random_rgb(450, 450, seed=4)
    image = Image.fromarray(array)
    cached = decode_cell(image)
    assert cached.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and cached.dtype == np.uint8
    assert cached.flags["C_CONTIGUOUS"]
    path = tmp_path / "cell.bmp"
    image.save(path)
    assert np.array_equal(decode_cell(path), cached)
    with pytest.raises(FileNotFoundError, match="missing.bmp"):
        decode_cell(tmp_path / "missing.bmp")
    (tmp_path / "junk.bmp").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.bmp.*not a readable image"):
        decode_cell(tmp_path / "junk.bmp")


def test_eval_transform_matches_cache_then_model_input():
    image = Image.fromarray(_smooth_rgb(450, 450))
    cached = torch.from_numpy(np.array(decode_cell(image))).permute(2, 0, 1)
    assert torch.equal(eval_transform(normalize=False)(image), to_model_input(cached[None], normalize=False)[0])
    torch.testing.assert_close(eval_transform(normalize=True)(image), to_model_input(cached[None], normalize=True)[0])


def test_bad_arguments():
    image = Image.fromarray(_random_rgb(8, 8))
    for kwargs in ({"size": 0}, {"size": -1}, {"size": 2.0}, {"crop_ratio": 1.5}, {"crop_ratio": 0}):
        with pytest.raises(ConfigError):
            decode_cell(image, **kwargs)
    with pytest.raises(ConfigError):
        BatchAugment(p_hflip=2.0)
    with pytest.raises(ConfigError):
        BatchAugment(p_vflip=-0.1)
    with pytest.raises(ConfigError):
        BatchAugment(degrees=-1)


# ---------------------------------------------------------------------------------------------- RGB conversion


def test_mode_L_and_RGBA_and_P():
    gray = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 256
    gray = gray.astype(np.uint8)
    rgb = np.asarray(to_rgb(Image.fromarray(gray, mode="L")))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(rgb[..., c], gray) for c in range(3))

    colour = _random_rgb(64, 64, seed=5)
    rgba = np.concatenate([colour, np.full((64, 64, 1), 7, np.uint8)], axis=-1)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA"))), colour)

    palette_image = Image.fromarray(colour).quantize(colors=16)
    assert palette_image.mode == "P"
    converted = np.asarray(to_rgb(palette_image))
    assert np.array_equal(converted, np.asarray(palette_image.convert("RGB")))
    assert len(np.unique(converted.reshape(-1, 3), axis=0)) > 1

    for image in (Image.fromarray(gray, mode="L"), Image.fromarray(rgba, mode="RGBA"), palette_image):
        cached = decode_cell(image, size=16)
        assert cached.shape == (16, 16, 3) and cached.dtype == np.uint8


def test_mode_16_bit_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert rgb.min() == 0 and rgb.max() == 255
    assert (rgb[..., 0] == 255).mean() < 0.01  # Pillow's own conversion makes ~all of them 255
    assert len(np.unique(rgb)) > 200
    # 32-bit 'I' images in [0, 65535] (how 16-bit PNGs used to open) are scaled the same way
    assert np.array_equal(np.asarray(to_rgb(image.convert("I")))[..., 1], expected)
    cached = decode_cell(image, size=8)
    assert cached.dtype == np.uint8 and 0 < cached.mean() < 255


def test_mode_16_bit_big_endian():
    ramp = np.linspace(0, 65535, 64).astype(">u2").reshape(8, 8)
    image = Image.frombytes("I;16B", (8, 8), ramp.tobytes())
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(image))[..., 0], expected)


def test_modes_without_a_defined_range_are_refused():
    with pytest.raises(DataError, match="32-bit float"):
        to_rgb(Image.new("F", (4, 4)))
    with pytest.raises(DataError, match=r"outside \[0, 65535\]"):
        to_rgb(Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)))


# ---------------------------------------------------------------------------------------------- whole pipelines


def test_eval_transform_deterministic_and_ranges():
    image = Image.fromarray(_smooth_rgb(450, 450))
    raw = eval_transform(normalize=False)
    first, second = raw(image), raw(image)
    assert torch.equal(first, second)
    assert first.dtype == torch.float32 and first.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert 0.0 <= first.min() and first.max() <= 1.0
    normalised = eval_transform()(image)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normalised, (first - mean) / std)
    assert eval_transform(size=64)(image).shape == (3, 64, 64)


def test_train_transform_varies_with_seed_and_reproduces():
    image = Image.fromarray(_smooth_rgb(450, 450))
    transform = train_transform(size=64, normalize=False)
    outputs = []
    for seed in range(6):
        torch.manual_seed(seed)
        outputs.append(transform(image))
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outputs)
    assert all(0.0 <= o.min() and o.max() <= 1.0 for o in outputs)
    assert len({o.numpy().tobytes() for o in outputs}) > 1
    torch.manual_seed(3)
    assert torch.equal(transform(image), outputs[3])
    # normalised output follows the formula
    torch.manual_seed(3)
    normalised = train_transform(size=64)(image)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normalised, (outputs[3] - mean) / std)


def test_train_transform_order_matches_paper():
    randoms = [t for t in train_transform().transforms if "Random" in type(t).__name__]
    assert [type(t).__name__ for t in randoms] == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation"]
    assert [t.p for t in randoms[:2]] == [FLIP_PROBABILITY, FLIP_PROBABILITY]
    assert list(randoms[2].degrees) == [-ROTATION_DEGREES, ROTATION_DEGREES]
    assert randoms[2].interpolation in (
        v2.InterpolationMode.NEAREST,
        "nearest",
    )  # torchvision's default, as the paper used
    assert not any("Random" in type(t).__name__ for t in eval_transform().transforms)


def test_describe_pipeline():
    """The pipeline in words, for the book (allkit.study.book.describe_pipeline, moved from allkit.transforms)."""
    steps = describe_pipeline()
    assert len(steps) == 8 and all(isinstance(s, str) for s in steps)
    assert "CenterCrop(448)" in steps[1] and "Resize(224)" in steps[2]
    assert [s.split("(")[0] for s in steps[3:6]] == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation"]
    assert "Normalize" in steps[-1]
    assert not any("Normalize" in s for s in describe_pipeline(normalize=False))
    assert not any("Random" in s for s in describe_pipeline(train=False))
    assert "Resize(64)" in describe_pipeline(size=64)[2]


# ---------------------------------------------------------------------------------------------- normalisation


def test_mean_std_is_the_one_parser():
    assert mean_std(True) == (IMAGENET_MEAN, IMAGENET_STD)
    assert mean_std(False) is None and mean_std(None) is None
    assert mean_std(([0.5, 0.5, 0.5], (0.25, 0.25, 0.25))) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for bad in ("imagenet", (1, 2), ((0.5, 0.5), (1, 1)), ((0.5,) * 3, (1, 0, 1)), ((0.5,) * 3, ("a", 1, 1))):
        with pytest.raises(ConfigError, match="normalize="):
            mean_std(bad)


def test_to_model_input_and_denormalize_round_trip():
    batch = _asymmetric_batch(4)
    raw = to_model_input(batch, normalize=False)
    assert raw.dtype == torch.float32 and raw.device == batch.device
    torch.testing.assert_close(raw, batch.float() / 255)
    normalised = to_model_input(batch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, (raw - mean) / std)
    torch.testing.assert_close(denormalize(normalised), raw)
    torch.testing.assert_close(denormalize(normalised[0]), raw[0])
    torch.testing.assert_close(denormalize(raw, normalize=False), raw)
    # float input in [0, 1] is normalised too
    torch.testing.assert_close(to_model_input(raw), normalised)
    # a backbone's own statistics
    stats = ((0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    own = to_model_input(batch, stats)
    torch.testing.assert_close(own, (raw - torch.tensor(stats[0]).view(3, 1, 1)) / torch.tensor(stats[1]).view(3, 1, 1))
    torch.testing.assert_close(denormalize(own, stats), raw)
    with pytest.raises(ConfigError):
        to_model_input(batch, normalize="yes")


# ---------------------------------------------------------------------------------------------- BatchAugment


def test_batch_augment_identity_when_disabled():
    batch = _asymmetric_batch(8)
    out = BatchAugment(p_hflip=0.0, p_vflip=0.0, degrees=0.0)(batch)
    assert out.dtype == torch.uint8 and torch.equal(out, batch)
    floats = batch.float() / 255
    assert torch.equal(BatchAugment(0.0, 0.0, 0.0)(floats), floats)


def test_batch_augment_p1_flips_are_torch_flips():
    batch = _asymmetric_batch(8)
    for data in (batch, batch.float() / 255):
        assert torch.equal(BatchAugment(p_hflip=1.0, p_vflip=0.0, degrees=0.0)(data), torch.flip(data, dims=[-1]))
        assert torch.equal(BatchAugment(p_hflip=0.0, p_vflip=1.0, degrees=0.0)(data), torch.flip(data, dims=[-2]))


def test_batch_augment_per_sample_flips():
    batch = _asymmetric_batch(64)
    augment = BatchAugment(p_hflip=0.5, p_vflip=0.5, degrees=0.0)
    out = augment(batch, generator=torch.Generator().manual_seed(123))
    hflipped = [torch.equal(out[i], batch[i].flip(-1)) for i in range(64)]
    vflipped = [torch.equal(out[i], batch[i].flip(-2)) for i in range(64)]
    both = [torch.equal(out[i], batch[i].flip(-1).flip(-2)) for i in range(64)]
    unchanged = [torch.equal(out[i], batch[i]) for i in range(64)]
    for i in range(64):
        assert unchanged[i] + hflipped[i] + vflipped[i] + both[i] == 1
    assert 0 < sum(unchanged) < 64 and 0 < sum(hflipped) < 64 and 0 < sum(vflipped) < 64
    # and it is exactly what the drawn flips say
    hflip, vflip, _ = _draws(augment, 64, 123)
    for i in range(64):
        expected = batch[i]
        if hflip[i]:
            expected = expected.flip(-1)
        if vflip[i]:
            expected = expected.flip(-2)
        assert torch.equal(out[i], expected)


@pytest.mark.parametrize("height,width", [(40, 40), (36, 52)])
def test_batch_augment_matches_torchvision(height, width):
    batch = torch.from_numpy(np.stack([_smooth_rgb(height, width)] * 6)).permute(0, 3, 1, 2).contiguous()
    batch[1:] = _asymmetric_batch(5, size=max(height, width))[..., :height, :width]
    augment = BatchAugment(p_hflip=0.5, p_vflip=0.5, degrees=ROTATION_DEGREES)
    hflip, vflip, angles = _draws(augment, 6, 7)
    assert max(abs(a) for a in angles) <= ROTATION_DEGREES and min(abs(a) for a in angles) > 0
    assert 0 < sum(hflip) < 6 or 0 < sum(vflip) < 6
    out = augment(batch, generator=torch.Generator().manual_seed(7))  # uint8 on the CPU: rotated with Pillow
    out_float = augment(batch.float(), generator=torch.Generator().manual_seed(7))  # a float batch: grid_sample
    assert out.dtype == torch.uint8 and out_float.dtype == torch.float32
    assert out.shape == out_float.shape == batch.shape
    margin = 4
    for i in range(6):
        expected = batch[i]
        if hflip[i]:
            expected = F.horizontal_flip(expected)
        if vflip[i]:
            expected = F.vertical_flip(expected)
        # exactly what torchvision's RandomRotation does to the paper's PIL images
        via_pil = F.pil_to_tensor(F.rotate(F.to_pil_image(expected), angles[i], v2.InterpolationMode.NEAREST, fill=0))
        assert torch.equal(out[i], via_pil), f"sample {i}"
        # the float batch: torchvision's tensor flips and rotation (nearest), per image
        expected = F.rotate(expected.float(), angles[i], interpolation=v2.InterpolationMode.NEAREST, fill=0)
        inner = (slice(None), slice(margin, height - margin), slice(margin, width - margin))
        mismatch = (out_float[i][inner] != expected[inner]).float().mean().item()
        assert mismatch <= 0.001, f"sample {i}: {mismatch:.4f} of interior pixels differ"
        # corners are zero-filled
        if abs(angles[i]) > 3:
            assert out[i][:, 0, 0].eq(0).all() and out_float[i][:, 0, 0].eq(0).all()


def test_batch_augment_float_batch():
    batch = _asymmetric_batch(4).float() / 255
    augment = BatchAugment()
    out = augment(batch, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == batch.shape
    # nearest-neighbour rotation only moves values: every output value is an input value or the black fill
    for i in range(4):
        assert set(out[i].unique().tolist()) <= set(batch[i].unique().tolist()) | {0.0}


def test_batch_augment_refuses_what_is_not_a_batch():
    augment = BatchAugment()
    for bad in (torch.zeros(24, 24), _asymmetric_batch(1)[0].float()):
        with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
            augment(bad)


def test_batch_augment_seeded_reproducibility():
    batch = _asymmetric_batch(16)
    augment = BatchAugment()
    first = augment(batch, generator=torch.Generator().manual_seed(42))
    second = augment(batch, generator=torch.Generator().manual_seed(42))
    other = augment(batch, generator=torch.Generator().manual_seed(43))
    assert torch.equal(first, second) and not torch.equal(first, other)
    torch.manual_seed(5)
    global_first = augment(batch)
    torch.manual_seed(5)
    assert torch.equal(global_first, augment(batch))


def test_batch_augment_default_probabilities():
    augment = BatchAugment()
    assert (augment.p_hflip, augment.p_vflip, augment.degrees) == (
        FLIP_PROBABILITY,
        FLIP_PROBABILITY,
        ROTATION_DEGREES,
    )
    batch = _asymmetric_batch(4000, size=4)
    out = BatchAugment(degrees=0.0)(batch, generator=torch.Generator().manual_seed(0))
    hflipped = np.mean(
        [torch.equal(out[i], batch[i].flip(-1)) or torch.equal(out[i], batch[i].flip(-1, -2)) for i in range(4000)]
    )
    vflipped = np.mean(
        [torch.equal(out[i], batch[i].flip(-2)) or torch.equal(out[i], batch[i].flip(-1, -2)) for i in range(4000)]
    )
    assert abs(hflipped - FLIP_PROBABILITY) < 0.03 and abs(vflipped - FLIP_PROBABILITY) < 0.03


# ---------------------------------------------------------------------------------------------- dihedral views


def test_dihedral_views_are_the_8_exact_flips_and_turns():
    batch = _asymmetric_batch(2, size=8)
    views = [dihedral(batch, v) for v in range(8)]
    assert torch.equal(views[0], batch)
    assert len({v.numpy().tobytes() for v in views}) == 8  # all different
    for v in views:  # the same pixels, moved: nothing interpolated
        assert v.dtype == batch.dtype and v.shape == batch.shape
        assert torch.equal(v.flatten(1).sort(1).values, batch.flatten(1).sort(1).values)
    assert torch.equal(views[1], torch.rot90(batch, 1, dims=(-2, -1)))
    assert torch.equal(views[2], batch.flip(-1).flip(-2))
    assert torch.equal(views[4], batch.flip(-1))
    for v in range(8):  # each view is undone by one of the views: the set is a group
        assert any(torch.equal(dihedral(views[v], w), batch) for w in range(8))
    for bad in (-1, 8):
        with pytest.raises(ConfigError, match="view="):
            dihedral(batch, bad)

"""Tests of allkit.transforms: the paper's pipelines, the cache decoding and the batched augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from allkit.constants import (
    CROP_SIZE,
    FLIP_PROBABILITY,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROTATION_DEGREES,
)
from allkit.errors import DataError
from allkit.transforms import (
    DEFAULT_CROP_RATIO,
    BatchAugment,
    augment_transform,
    decode_for_cache,
    denormalize,
    describe_pipeline,
    deterministic_transform,
    eval_transform,
    to_model_input,
    to_rgb,
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
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


# ---------------------------------------------------------------------------------------------- deterministic


def test_crop_ratio_constant():
    assert DEFAULT_CROP_RATIO == CROP_SIZE / 450


def test_deterministic_450_pil_equals_centercrop_then_resize():
    image = Image.fromarray(_random_rgb(450, 450))
    out = deterministic_transform()(image)
    expected = v2.Compose([v2.CenterCrop(CROP_SIZE), v2.Resize(IMAGE_SIZE), v2.ToImage()])(image)
    assert type(out) is torch.Tensor
    assert out.dtype == torch.uint8 and out.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(out, expected.as_subclass(torch.Tensor))


def test_deterministic_450_tensor_equals_centercrop_then_resize():
    tensor = torch.from_numpy(_random_rgb(450, 450, seed=1)).permute(2, 0, 1).contiguous()
    out = deterministic_transform()(tensor)
    expected = v2.Resize(IMAGE_SIZE, antialias=True)(v2.CenterCrop(CROP_SIZE)(tensor))
    assert out.dtype == torch.uint8
    assert torch.equal(out, expected)


def test_deterministic_other_sizes_scale_the_crop():
    array = _random_rgb(300, 300, seed=2)
    out = deterministic_transform(size=64)(Image.fromarray(array))
    assert out.shape == (3, 64, 64)
    # 448/450 * 300 = 298.67 -> 299
    expected = v2.Compose([v2.CenterCrop(299), v2.Resize(64), v2.ToImage()])(Image.fromarray(array))
    assert torch.equal(out, expected.as_subclass(torch.Tensor))


@pytest.mark.parametrize("height,width", [(450, 600), (600, 450), (97, 61)])
def test_deterministic_non_square(height, width):
    array = _random_rgb(height, width, seed=3)
    side = round(DEFAULT_CROP_RATIO * min(height, width))
    out = deterministic_transform(size=32)(Image.fromarray(array))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    expected = v2.Compose([v2.CenterCrop(side), v2.Resize(32), v2.ToImage()])(Image.fromarray(array))
    assert torch.equal(out, expected.as_subclass(torch.Tensor))
    cached = decode_for_cache(Image.fromarray(array), size=32)
    assert cached.shape == (32, 32, 3) and cached.dtype == np.uint8
    assert np.array_equal(cached, out.permute(1, 2, 0).numpy())


def test_decode_for_cache_shape_and_path(tmp_path):
    array = _random_rgb(450, 450, seed=4)
    image = Image.fromarray(array)
    cached = decode_for_cache(image)
    assert cached.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and cached.dtype == np.uint8
    assert cached.flags["C_CONTIGUOUS"]
    path = tmp_path / "cell.bmp"
    image.save(path)
    assert np.array_equal(decode_for_cache(path), cached)
    with pytest.raises(DataError):
        decode_for_cache(tmp_path / "missing.bmp")


def test_eval_transform_matches_cache_then_model_input():
    image = Image.fromarray(_smooth_rgb(450, 450))
    cached = torch.from_numpy(decode_for_cache(image)).permute(2, 0, 1)
    assert torch.equal(eval_transform(normalize=False)(image), to_model_input(cached, normalize=False))
    # normalising uint8 is one fused multiply-add in to_model_input: equal up to float rounding
    torch.testing.assert_close(eval_transform(normalize=True)(image), to_model_input(cached, normalize=True))


def test_bad_arguments():
    with pytest.raises(ValueError):
        deterministic_transform(size=0)
    with pytest.raises(ValueError):
        deterministic_transform(crop_ratio=1.5)
    with pytest.raises(ValueError):
        BatchAugment(p_hflip=2.0)
    with pytest.raises(ValueError):
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
        cached = decode_for_cache(image, size=16)
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
    cached = decode_for_cache(image, size=8)
    assert cached.dtype == np.uint8 and 0 < cached.mean() < 255


def test_mode_16_bit_big_endian():
    ramp = np.linspace(0, 65535, 64).astype(">u2").reshape(8, 8)
    image = Image.frombytes("I;16B", (8, 8), ramp.tobytes())
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(image))[..., 0], expected)


def test_tensor_channels_and_errors():
    gray = torch.randint(0, 256, (1, 450, 450), dtype=torch.uint8)
    out = deterministic_transform(size=16)(gray)
    assert out.shape == (3, 16, 16) and torch.equal(out[0], out[1])
    rgba = torch.randint(0, 256, (4, 450, 450), dtype=torch.uint8)
    assert torch.equal(deterministic_transform(size=16)(rgba), deterministic_transform(size=16)(rgba[:3]))
    with pytest.raises(DataError):
        deterministic_transform(size=16)(torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(DataError):
        to_rgb(Image.new("F", (4, 4)))


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
    names = [type(t).__name__ for t in train_transform().transforms]
    paper = ["RatioCenterCrop", "Resize", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation"]
    assert [n for n in names if n in paper] == paper
    flips = [t for t in train_transform().transforms if "Flip" in type(t).__name__]
    assert [t.p for t in flips] == [FLIP_PROBABILITY, FLIP_PROBABILITY]
    assert "Normalize" in names and "Normalize" not in [
        type(t).__name__ for t in train_transform(normalize=False).transforms
    ]
    assert not any("Random" in type(t).__name__ for t in eval_transform().transforms)


def test_augment_transform_single_image():
    image = torch.from_numpy(_smooth_rgb(32, 32)).permute(2, 0, 1).contiguous()
    transform = augment_transform()
    outputs = []
    for seed in range(4):
        torch.manual_seed(seed)
        outputs.append(transform(image))
    assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outputs)
    assert len({o.numpy().tobytes() for o in outputs}) > 1
    assert torch.equal(augment_transform(0.0, 0.0, 0.0)(image), image)


def test_describe_pipeline():
    steps = describe_pipeline()
    assert len(steps) == 8 and all(isinstance(s, str) for s in steps)
    assert "CenterCrop(448)" in steps[1] and "Resize(224)" in steps[2]
    assert "Normalize" in steps[-1]
    assert not any("Normalize" in s for s in describe_pipeline(normalize=False))
    assert not any("Random" in s for s in describe_pipeline(train=False))


# ---------------------------------------------------------------------------------------------- BatchAugment


def test_batch_augment_identity_when_disabled():
    batch = _asymmetric_batch(8)
    out = BatchAugment(p_hflip=0.0, p_vflip=0.0, degrees=0.0)(batch)
    assert out.dtype == torch.uint8 and torch.equal(out, batch)
    floats = batch.float() / 255
    assert torch.equal(BatchAugment(0.0, 0.0, 0.0)(floats), floats)


def test_batch_augment_p1_hflip_is_torch_flip():
    batch = _asymmetric_batch(8)
    assert torch.equal(
        BatchAugment(p_hflip=1.0, p_vflip=0.0, degrees=0.0)(batch), torch.flip(batch, dims=[-1])
    )
    assert torch.equal(
        BatchAugment(p_hflip=0.0, p_vflip=1.0, degrees=0.0)(batch), torch.flip(batch, dims=[-2])
    )


def test_batch_augment_per_sample_flips():
    batch = _asymmetric_batch(64)
    augment = BatchAugment(p_hflip=0.5, p_vflip=0.5, degrees=0.0)
    generator = torch.Generator().manual_seed(123)
    out = augment(batch, generator=generator)
    hflipped = [torch.equal(out[i], batch[i].flip(-1)) for i in range(64)]
    vflipped = [torch.equal(out[i], batch[i].flip(-2)) for i in range(64)]
    both = [torch.equal(out[i], batch[i].flip(-1).flip(-2)) for i in range(64)]
    unchanged = [torch.equal(out[i], batch[i]) for i in range(64)]
    for i in range(64):
        assert unchanged[i] + hflipped[i] + vflipped[i] + both[i] == 1
    assert 0 < sum(unchanged) < 64 and 0 < sum(hflipped) < 64 and 0 < sum(vflipped) < 64
    # and it is exactly what the sampled parameters say
    params = augment.sample_params(64, torch.Generator().manual_seed(123))
    for i in range(64):
        expected = batch[i]
        if params["hflip"][i]:
            expected = expected.flip(-1)
        if params["vflip"][i]:
            expected = expected.flip(-2)
        assert torch.equal(out[i], expected)


@pytest.mark.parametrize("height,width", [(40, 40), (36, 52)])
def test_batch_augment_rotation_matches_torchvision(height, width):
    batch = torch.from_numpy(np.stack([_smooth_rgb(height, width)] * 6)).permute(0, 3, 1, 2).contiguous()
    batch[1:] = _asymmetric_batch(5, size=max(height, width))[..., :height, :width]
    augment = BatchAugment(p_hflip=0.5, p_vflip=0.5, degrees=ROTATION_DEGREES)
    params = augment.sample_params(6, torch.Generator().manual_seed(7))
    assert params["angle"].abs().max() <= ROTATION_DEGREES and params["angle"].abs().min() > 0
    out = augment.apply(batch, params)  # uint8 on the CPU: rotated with Pillow
    out_float = augment.apply(batch.float(), params)  # any other dtype or device: grid_sample
    assert out.dtype == torch.uint8 and out_float.dtype == torch.float32
    margin = 4
    for i in range(6):
        expected = batch[i]
        if params["hflip"][i]:
            expected = F.horizontal_flip(expected)
        if params["vflip"][i]:
            expected = F.vertical_flip(expected)
        angle = float(params["angle"][i])
        # exactly what torchvision's RandomRotation does to the paper's PIL images
        via_pil = F.pil_to_tensor(F.rotate(F.to_pil_image(expected), angle, v2.InterpolationMode.NEAREST, fill=0))
        assert torch.equal(out[i], via_pil), f"sample {i}"
        expected = F.rotate(expected, angle, interpolation=v2.InterpolationMode.NEAREST, fill=0)
        inner = (slice(None), slice(margin, height - margin), slice(margin, width - margin))
        mismatch = (out_float[i][inner] != expected[inner].float()).float().mean().item()
        assert mismatch <= 0.001, f"sample {i}: {mismatch:.4f} of interior pixels differ"
        # corners are zero-filled
        if abs(float(params["angle"][i])) > 3:
            assert out[i][:, 0, 0].eq(0).all()


def test_batch_augment_float_and_single_image():
    batch = _asymmetric_batch(4).float() / 255
    augment = BatchAugment()
    out = augment(batch, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == batch.shape
    # nearest-neighbour rotation only moves values: uint8 and float give the same picture
    out_uint8 = augment(_asymmetric_batch(4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, out_uint8.float() / 255)
    single = augment(_asymmetric_batch(1)[0], generator=torch.Generator().manual_seed(0))
    assert single.shape == (3, 24, 24) and single.dtype == torch.uint8
    with pytest.raises(DataError):
        augment(torch.zeros(24, 24))


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
    params = augment.sample_params(4000, torch.Generator().manual_seed(0))
    assert abs(params["hflip"].float().mean().item() - FLIP_PROBABILITY) < 0.03
    assert abs(params["vflip"].float().mean().item() - FLIP_PROBABILITY) < 0.03


# ---------------------------------------------------------------------------------------------- model input


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
    # float input in [0, 1] is normalised too
    torch.testing.assert_close(to_model_input(raw), normalised)
    channels_last = to_model_input(batch, channels_last=True)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last, normalised)
    with pytest.raises(DataError):
        to_model_input(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))

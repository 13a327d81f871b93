"""Acquisition robustness: preprocessing options that make cameras alike (colour standardisation,
luminance CLAHE, colour matching, resolution/blur normalisation) and acquisition augmentations
(gamma, saturation/hue, blur, JPEG, downscale-upscale, vignetting).

Reference values are computed independently with numpy/OpenCV; with every option off the cache
must produce the same bytes and the same key as before the options existed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from retinassl.data import augment
from retinassl.data.augment import AcquisitionAugmentConfig, acquisition_augment
from retinassl.data.cache import Cache
from retinassl.data.manifest import Manifest
from retinassl.data.field_of_view import apply_geometry, fov_mask
from retinassl.data.harmonize import (ColorReference, match_histogram, match_lab_statistics, normalize_resolution,
                                      reference_statistics, standardize_color, subtract_background)
from retinassl.data.preprocess import PreprocessConfig, compute_geometry


def textured_fundus(seed: int, h: int = 56, w: int = 64, tint: tuple[int, int, int] = (170, 85, 30)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A disc of smooth random texture around ``tint`` on black: (uint8 (h, w, 3), bool FOV)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    fov = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= (min(h, w) / 2 - 2) ** 2
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    noise /= noise.std()
    image = np.clip(np.asarray(tint) + noise * np.asarray([20, 12, 6]), 1, 254).astype(np.uint8)
    return image * fov[..., None].astype(np.uint8), fov


def dataset(root: Path, n: int = 2) -> Manifest:
    records = []
    for i in range(n):
        image, _ = textured_fundus(i)
        Image.fromarray(image).save(root / f"img{i}.png")
        records.append({"id": f"im{i}", "image": f"img{i}.png"})
    return Manifest.from_records(records, root)


# -- preprocessing ------------------------------------------------------------------------------


def test_color_standardisation_gives_the_target_mean_and_std_inside_the_fov(tmp_path: Path) -> None:
    image, fov = textured_fundus(0)
    out = standardize_color(image, fov, (120.0, 100.0, 90.0), (20.0, 15.0, 10.0))
    inside = out[fov].astype(np.float64)
    np.testing.assert_allclose(inside.mean(axis=0), [120, 100, 90], atol=0.3)
    np.testing.assert_allclose(inside.std(axis=0), [20, 15, 10], atol=0.3)
    # the same through the cache (FOV crop, resize, then the option), one target for all channels
    config = PreprocessConfig(size=40, color_standardize=True, color_target_mean=128.0,
                              color_target_std=30.0)
    entry = Cache(tmp_path / "cache").prepare(dataset(tmp_path, 1), config).entries[0]
    cached, cached_fov = np.asarray(entry.image()), np.asarray(entry.fov())
    inside = cached[cached_fov].astype(np.float64)
    np.testing.assert_allclose(inside.mean(axis=0), 128, atol=0.5)
    np.testing.assert_allclose(inside.std(axis=0), 30, atol=0.5)
    assert not cached[~cached_fov].any()  # still masked outside the FOV


def test_common_gain_scales_every_channel_alike_and_keeps_their_contrast_ratios() -> None:
    image, fov = textured_fundus(0)
    before = image[fov].astype(np.float64)
    out = standardize_color(image, fov, (120.0, 100.0, 90.0), 20.0, gain="common")
    inside = out[fov].astype(np.float64)
    np.testing.assert_allclose(inside.mean(axis=0), [120, 100, 90], atol=0.3)
    # one gain: the target over the root mean square of the channels' standard deviations
    gain = 20.0 / np.sqrt(np.mean(before.std(axis=0) ** 2))
    np.testing.assert_allclose(inside.std(axis=0), gain * before.std(axis=0), atol=0.3)
    np.testing.assert_allclose(np.sqrt(np.mean(inside.std(axis=0) ** 2)), 20.0, atol=0.3)
    np.testing.assert_array_equal(standardize_color(image, fov, 128.0, (20.0,) * 3, gain="common"),
                                  standardize_color(image, fov, 128.0, 20.0, gain="common"))
    with pytest.raises(ValueError, match="one target std"):
        standardize_color(image, fov, 128.0, (20.0, 15.0, 10.0), gain="common")
    with pytest.raises(ValueError, match="color_gain 'common'"):
        PreprocessConfig(color_standardize=True, color_gain="common", color_target_std=(20.0, 15.0, 10.0))
    # the default ("channel") is the map the cache keys and saved models had before the option existed (the
    # keys printed by the code before it, at 36dc3df)
    assert PreprocessConfig(color_standardize=True).cache_key() == "5ab8ebf014e1"
    assert PreprocessConfig(size=64, color_standardize=True, color_target_std=20.0, color_gain="channel").cache_key() \
        == "156994a07028"
    assert PreprocessConfig(color_standardize=True, color_gain="common").cache_key() != "5ab8ebf014e1"
    assert PreprocessConfig(color_standardize=True, color_gain="common").input_signature()["color_gain"] == "common"
    assert "color_gain" not in PreprocessConfig(color_gain="common").input_signature()  # off with the option
    grey = PreprocessConfig(channels=1, color_standardize=True, color_gain="common")
    assert "color_gain" not in grey.input_signature()  # one channel: both gains are the same map


def _old_pipeline(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """The cached pixels as computed before the acquisition options existed (written out here)."""
    fov = fov_mask(image, config.fov_threshold)
    geometry = compute_geometry(fov, 1.0, (image.shape[1], image.shape[0]), config)
    out = apply_geometry(image, geometry)
    out_fov = apply_geometry(fov, geometry, is_mask=True)
    if config.clahe:
        lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(clipLimit=config.clahe_clip, tileGridSize=(8, 8)).apply(lab[..., 0])
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if config.subtract_background:
        out = subtract_background(out, out_fov, config.background_sigma * config.size)
    if config.mask_outside_fov:
        out = out * out_fov[..., None].astype(np.uint8)
    return out


@pytest.mark.parametrize("settings, key", [
    ({}, "09220e8b2419"),
    ({"size": 64}, "bf183ac1f01c"),
    ({"size": 64, "clahe": True}, "e489bf2f8e52"),
    ({"size": 64, "subtract_background": True}, "ae5d43284f0e"),
    ({"size": 224, "clahe": True, "clahe_clip": 3.0}, "68b09ad5cc42"),
])
def test_cache_keys_of_configs_without_the_options_are_unchanged(settings: dict, key: str) -> None:
    # the keys printed by the code before the options existed: old caches stay valid
    assert PreprocessConfig(**settings).cache_key() == key
    # settings at their "off" values (or only used by an option that is off) change nothing
    same = PreprocessConfig(**settings, clahe_space="lab", clahe_tiles=8, color_target_mean=60.0,
                            color_target_std=(5.0, 6.0, 7.0), color_gain="common", fov_resolution=None,
                            sharpness_sigma=0.0)
    assert same.cache_key() == key


@pytest.mark.parametrize("settings", [
    {"size": 40},
    {"size": 40, "clahe": True},
    {"size": 40, "subtract_background": True, "mask_outside_fov": False},
    {"size": 40, "clahe": True, "subtract_background": True},
])
def test_options_off_leave_the_cached_pixels_byte_identical(tmp_path: Path, settings: dict) -> None:
    manifest = dataset(tmp_path, 2)
    config = PreprocessConfig(**settings)
    prepared = Cache(tmp_path / "cache").prepare(manifest, config)
    for row, entry in enumerate(prepared.entries):
        image = np.asarray(Image.open(tmp_path / f"img{row}.png").convert("RGB"))
        expected = _old_pipeline(image, config)
        assert np.asarray(entry.image()).tobytes() == expected.tobytes()


def _reference() -> ColorReference:
    return ColorReference(lab_mean=(50.0, 10.0, 20.0), lab_std=(10.0, 5.0, 5.0),
                          quantiles=((0.0, 128.0, 255.0),) * 3)


@pytest.mark.parametrize("option", [
    {"clahe": True, "clahe_space": "ycrcb"},
    {"clahe": True, "clahe_tiles": 4},
    {"color_standardize": True},
    {"color_standardize": True, "color_target_mean": 100.0},
    {"color_standardize": True, "color_target_std": 20.0},
    {"color_match": "lab", "color_reference": _reference()},
    {"color_match": "histogram", "color_reference": _reference()},
    {"fov_resolution": 100},
    {"sharpness_sigma": 0.01},
])
def test_cache_key_changes_with_each_option(option: dict) -> None:
    base = PreprocessConfig(size=64, clahe="clahe_space" in option or "clahe_tiles" in option)
    changed = PreprocessConfig(size=64, **{"clahe": base.clahe, **option})
    assert changed.cache_key() != base.cache_key()


def test_cache_keys_of_different_options_all_differ() -> None:
    configs = [PreprocessConfig(size=64, color_match="lab", color_reference=_reference()),
               PreprocessConfig(size=64, color_match="lab", color_reference=_reference().model_copy(
                   update={"lab_mean": (60.0, 10.0, 20.0)})),
               PreprocessConfig(size=64, color_match="histogram", color_reference=_reference()),
               PreprocessConfig(size=64, fov_resolution=100),
               PreprocessConfig(size=64, fov_resolution=120),
               PreprocessConfig(size=64, sharpness_sigma=0.01),
               PreprocessConfig(size=64, sharpness_sigma=0.02)]
    keys = [c.cache_key() for c in configs]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("space, forward", [("lab", cv2.COLOR_RGB2LAB), ("ycrcb", cv2.COLOR_RGB2YCrCb)])
def test_luminance_clahe_changes_only_the_luminance(space: str, forward: int) -> None:
    from retinassl.data.harmonize import apply_clahe

    image, _ = textured_fundus(1)
    out = apply_clahe(image, 4.0, space=space)
    before, after = cv2.cvtColor(image, forward).astype(int), cv2.cvtColor(out, forward).astype(int)
    assert np.abs(after[..., 0] - before[..., 0]).mean() > 3  # luminance equalised
    # the colour channels only move by the rounding of the colour-space round trip
    assert np.abs(after[..., 1:] - before[..., 1:]).mean() < 1.5


def test_histogram_matching_reproduces_the_reference_distribution() -> None:
    image, fov = textured_fundus(2)
    target, target_fov = textured_fundus(3, tint=(120, 60, 60))
    reference = reference_statistics([(target, target_fov)], quantiles=65)
    # the reference quantiles are those of the pooled FOV pixels (numpy's quantile, +-1 level)
    for c in range(3):
        np.testing.assert_allclose(reference.quantiles[c][16::16][:3],
                                   np.quantile(target[..., c][target_fov], [0.25, 0.5, 0.75]), atol=1.0)
    out = match_histogram(image, fov, reference.quantiles)
    for c in range(3):
        np.testing.assert_allclose(np.quantile(out[..., c][fov], [0.1, 0.5, 0.9]),
                                   np.quantile(target[..., c][target_fov], [0.1, 0.5, 0.9]), atol=2.0)
    # matched to its own statistics, an image barely moves (the sparse tails a few levels at most)
    own = match_histogram(image, fov, reference_statistics([(image, fov)], quantiles=257).quantiles)
    moved = np.abs(own.astype(int) - image.astype(int))[fov]
    assert (moved <= 1).mean() > 0.99 and moved.max() <= 5


def test_lab_matching_gives_the_reference_lab_statistics() -> None:
    image, fov = textured_fundus(4)
    target, target_fov = textured_fundus(5, tint=(110, 90, 70))
    reference = reference_statistics([(target, target_fov)])
    lab_target = cv2.cvtColor(target.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)[target_fov]
    np.testing.assert_allclose(reference.lab_mean, lab_target.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(reference.lab_std, lab_target.std(axis=0), rtol=1e-3)
    out = match_lab_statistics(image, fov, reference)
    lab = cv2.cvtColor(out.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)[fov]
    np.testing.assert_allclose(lab.mean(axis=0), reference.lab_mean, atol=0.5)
    np.testing.assert_allclose(lab.std(axis=0), reference.lab_std, rtol=0.08)


def test_resolution_bottleneck_removes_fine_detail_and_keeps_coarse_images() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    fov = np.ones((48, 48), bool)
    # stored at 4x the output resolution: the bottleneck to 12 px across averages 4x4 blocks
    out = normalize_resolution(image, fov, scale=0.25, resolution=12)
    blocks = cv2.resize(image, (12, 12), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, cv2.resize(blocks, (48, 48), interpolation=cv2.INTER_LINEAR))
    assert out.astype(float).std() < 0.5 * image.astype(float).std()
    # stored with only 10 px across the FOV: it has no more detail than the bottleneck, unchanged
    assert normalize_resolution(image, fov, scale=48 / 10, resolution=12) is image


def test_common_blur_blurs_sharp_images_and_leaves_soft_ones() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(60, 200, (48, 48, 3), dtype=np.uint8)
    fov = np.ones((48, 48), bool)
    sigma = 1.5 / 48  # 1.5 px target blur
    sharp = normalize_resolution(image, fov, scale=0.5, sharpness=sigma)  # footprint 1 px
    expected = cv2.GaussianBlur(image.astype(np.float32), (0, 0), float(np.sqrt(1.5 ** 2 - 1 / 12)))
    assert np.abs(sharp.astype(float) - np.rint(expected)).max() <= 1
    # upsampled 6x: its own blur (6 / sqrt(12) = 1.73 px) already exceeds the target
    assert normalize_resolution(image, fov, scale=6.0, sharpness=sigma) is image


def test_invalid_acquisition_options_are_refused() -> None:
    with pytest.raises(ValidationError, match="needs color_reference"):
        PreprocessConfig(color_match="lab")
    with pytest.raises(ValidationError, match="choose one"):
        PreprocessConfig(color_standardize=True, color_match="histogram", color_reference=_reference())
    with pytest.raises(ValidationError, match="colour images"):
        PreprocessConfig(channels=1, color_match="lab", color_reference=_reference())
    with pytest.raises(ValidationError, match="1 or 3 values"):
        PreprocessConfig(color_standardize=True, color_target_mean=(1.0, 2.0))
    with pytest.raises(ValidationError, match="non-decreasing"):
        ColorReference(lab_mean=(0, 0, 0), lab_std=(1, 1, 1), quantiles=((5.0, 3.0),))


def test_options_are_recorded_in_the_config_json() -> None:
    config = PreprocessConfig(size=64, color_match="histogram", color_reference=_reference(),
                              fov_resolution=50, sharpness_sigma=0.01, clahe=True, clahe_space="ycrcb")
    again = PreprocessConfig.model_validate_json(config.model_dump_json())
    assert again == config and again.cache_key() == config.cache_key()


# -- augmentation -------------------------------------------------------------------------------

ALL_ON = AcquisitionAugmentConfig(blur_probability=1.0, downscale_probability=1.0,
                                  vignetting_probability=1.0, gamma_probability=1.0,
                                  saturation_hue_probability=1.0, jpeg_probability=1.0)


def batch(seed: int = 0, b: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand((b, 3, size, size), generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_batch_different_seed_different_batch() -> None:
    x = batch()
    a = acquisition_augment(x, ALL_ON, torch.Generator().manual_seed(7))
    b = acquisition_augment(x, ALL_ON, torch.Generator().manual_seed(7))
    c = acquisition_augment(x, ALL_ON, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_off_by_default_returns_the_input_and_draws_nothing() -> None:
    x = batch()
    generator = torch.Generator().manual_seed(3)
    assert acquisition_augment(x, AcquisitionAugmentConfig(), generator) is x
    assert acquisition_augment(x, None, generator) is x
    assert torch.equal(torch.rand(5, generator=generator), torch.rand(5, generator=torch.Generator().manual_seed(3)))


def test_values_stay_in_range() -> None:
    x = batch(1)
    x[0] = 1.0
    x[1] = 0.0
    strong = ALL_ON.model_copy(update={"saturation": (2.0, 3.0), "hue": 90.0, "gamma": (0.2, 5.0)})
    out = acquisition_augment(x, strong, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_gamma_on_a_constant_image_is_the_closed_form() -> None:
    x = torch.full((3, 3, 8, 8), 0.6)
    fixed = augment.random_gamma(x, torch.Generator().manual_seed(0), gamma=(2.0, 2.0))
    torch.testing.assert_close(fixed, torch.full_like(x, 0.36))
    drawn = augment.random_gamma(x, torch.Generator().manual_seed(0), gamma=(0.5, 2.0))
    exponents = torch.log(drawn[:, 0, 0, 0]) / np.log(0.6)  # each sample one exponent in range
    assert bool(((exponents >= 0.5 - 1e-4) & (exponents <= 2.0 + 1e-4)).all())
    torch.testing.assert_close(drawn, 0.6 ** exponents.view(-1, 1, 1, 1).expand_as(x))


def test_blur_preserves_the_mean_and_lowers_the_variance() -> None:
    x = batch(2)
    out = augment.gaussian_blur(x, torch.Generator().manual_seed(0), sigma=(1.0, 2.0), probability=1.0)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=5e-3, rtol=0)
    assert bool((out.var(dim=(1, 2, 3)) < 0.5 * x.var(dim=(1, 2, 3))).all())


def test_jpeg_recompression_changes_pixels_and_keeps_the_mean() -> None:
    smooth = torch.nn.functional.avg_pool2d(batch(3, size=64), 5, 1, 2)
    out = augment.jpeg_recompress(smooth, torch.Generator().manual_seed(0), quality=(20, 40))
    assert (out - smooth).abs().mean() > 2e-3
    torch.testing.assert_close(out.mean(dim=(2, 3)), smooth.mean(dim=(2, 3)), atol=0.01, rtol=0)
    levels = out * 255
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    # the same as OpenCV's own round trip of that sample (BGR order, the drawn quality)
    generator = torch.Generator().manual_seed(0)
    torch.rand(4, generator=generator)
    quality = int(torch.randint(20, 41, (4,), generator=generator)[0])
    first = (smooth[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()[..., ::-1]
    _, encoded = cv2.imencode(".jpg", np.ascontiguousarray(first), [cv2.IMWRITE_JPEG_QUALITY, quality])
    expected = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32) / 255
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_downscale_upscale_removes_fine_detail_and_keeps_flat_images() -> None:
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2).float()
    x = checker.expand(2, 3, 32, 32).clone()
    out = augment.downscale_upscale(x, torch.Generator().manual_seed(0), scale=(0.5, 0.5))
    torch.testing.assert_close(out, torch.full_like(x, 0.5))  # 2x2 averages of a checkerboard
    flat = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(augment.downscale_upscale(flat, torch.Generator().manual_seed(0)), flat)


def test_vignetting_is_the_radial_fall_off() -> None:
    x = torch.full((2, 3, 20, 20), 0.8)
    out = augment.vignetting(x, torch.Generator().manual_seed(0), strength=(0.4, 0.4), offset=0.0)
    r2 = ((torch.arange(20) + 0.5) / 20 * 2 - 1) ** 2
    expected = 0.8 * (1 - 0.4 * (r2.view(1, -1) + r2.view(-1, 1)))
    torch.testing.assert_close(out[0, 1], expected)
    assert bool((out <= x).all())


def test_saturation_hue_keeps_luma_and_greys() -> None:
    x = batch(4)
    x[0] = x[0, :1].expand(3, -1, -1)  # a grey image
    out = augment.saturation_hue(x, torch.Generator().manual_seed(0), saturation=(0.8, 1.2), hue=30.0)
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)

    def luma(t: torch.Tensor) -> torch.Tensor:
        return 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]

    inside = (out > 0) & (out < 1)  # luma is kept where nothing was clipped
    kept = inside.all(dim=1)
    torch.testing.assert_close(luma(out)[kept], luma(x)[kept], atol=1e-5, rtol=0)
    gray = augment.saturation_hue(x, torch.Generator().manual_seed(0), saturation=(0.0, 0.0), hue=0.0)
    torch.testing.assert_close(gray, luma(x).unsqueeze(1).expand_as(x), atol=1e-5, rtol=0)


def test_augmentation_config_refuses_bad_ranges() -> None:
    with pytest.raises(ValidationError, match="low"):
        AcquisitionAugmentConfig(gamma=(2.0, 1.0))
    with pytest.raises(ValidationError):
        AcquisitionAugmentConfig(jpeg_quality=(0, 50))
    with pytest.raises(ValidationError):
        AcquisitionAugmentConfig(bogus=1.0)

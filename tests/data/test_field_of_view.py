"""The field-of-view estimate: the corner-background rule (``fov_background``) for cameras whose
outside is not black, and that it leaves every photograph with black corners exactly as before."""

from __future__ import annotations

import numpy as np

from retinassl.data.field_of_view import corner_background, fov_mask
from retinassl.data.preprocess import PreprocessConfig


def photograph(background: tuple[int, int], h: int = 300, w: int = 360, r: float = 130,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A vignetted retina disc (brightness 70 at the rim to 220 at the centre) on a noisy
    background uniform in ``background``; returns (image, FOV truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot(xx - w / 2, yy - h / 2)
    fov = radius <= r
    level = np.where(fov, 220 - 150 * (radius / r) ** 2, rng.integers(*background, size=(h, w)))
    image = np.stack([level, level * 0.5, level * 0.2], axis=-1)
    return np.clip(image, 0, 255).astype(np.uint8), fov


def test_a_grey_noisy_background_is_kept_out_of_the_fov_with_the_rule():
    image, truth = photograph(background=(15, 46))  # STARE's corners: 13-45 grey levels
    plain = fov_mask(image)
    assert plain.mean() > 0.95  # the plain threshold (8 % of the brightest) takes the background in
    ruled = fov_mask(image, background=True)
    assert (ruled != truth).mean() < 0.01


def test_black_corners_give_the_same_fov_with_and_without_the_rule():
    for seed in range(3):
        image, truth = photograph(background=(0, 12), seed=seed)
        plain, ruled = fov_mask(image), fov_mask(image, background=True)
        assert np.array_equal(plain, ruled)
        assert (ruled != truth).mean() < 0.01


def test_a_photograph_cropped_inside_its_fov_is_left_alone():
    """Retina reaching the corners is not background: the rule must not cut the dim periphery."""
    image, _ = photograph(background=(0, 1), r=300)  # the disc covers the whole frame
    brightness = image.max(axis=2)
    cut = 0.08 * np.percentile(brightness, 99)
    assert corner_background(brightness, cut) == cut
    assert fov_mask(image, background=True).all()


def test_the_corner_level_is_the_brightest_corner_pixel():
    brightness = np.full((100, 100), 150, np.uint8)
    brightness[:5, :5], brightness[-5:, -5:], brightness[:5, -5:], brightness[-5:, :5] = 10, 20, 30, 41
    assert corner_background(brightness, cut=12.0) == 41.0


def test_the_rule_is_in_the_cache_key_only_when_on():
    """Caches made before the option existed stay valid; pixels made with the rule get their own."""
    off = PreprocessConfig()
    assert PreprocessConfig(fov_background=False).cache_key() == off.cache_key()
    assert PreprocessConfig(fov_background=True).cache_key() != off.cache_key()

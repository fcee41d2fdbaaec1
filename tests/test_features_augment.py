"""Tests for vggtl.features.augment: reproducible augmented views of decoded images.

Pure NumPy/Pillow, no TensorFlow: every test runs in milliseconds. Where a
test needs one exact transform (a 45-degree turn, a forced flip), a stub
random generator returns the end of each range instead of a random draw.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from vggtl.features import augment
from vggtl.config import AugmentConfig

SHA = hashlib.sha256(b"some image").hexdigest()
SEED = 7
OFF = dict(
    horizontal_flip=False,
    vertical_flip=False,
    rotation=0.0,
    zoom=0.0,
    shear=0.0,
    width_shift=0.0,
    height_shift=0.0,
    brightness=0.0,
)
ALONE = {  # one transform on, all others off
    "horizontal_flip": True,
    "vertical_flip": True,
    "rotation": 30.0,
    "zoom": 0.3,
    "shear": 20.0,
    "width_shift": 0.2,
    "height_shift": 0.2,
    "brightness": 0.3,
}


def only(**on) -> AugmentConfig:
    """An augment config with every transform off except ``on``."""
    return AugmentConfig(**{**OFF, **on})


class Extremes:
    """Stands in for the view's random generator: flips always (or never), and
    every range yields its low end (``at=0``) or high end (``at=1``)."""

    def __init__(self, at: float = 1.0, flip: bool = True):
        self.at, self.flip = at, flip

    def random(self):
        return 0.0 if self.flip else 0.99

    def uniform(self, low, high, size=None):
        value = low + (high - low) * self.at
        return value if size is None else np.full(size, value)


def flips(view: int) -> bool:
    """Whether the view's first draw (the flip decision) says flip."""
    return augment.view_rng(SEED, SHA, view).random() < 0.5


@pytest.fixture
def pixels() -> np.ndarray:
    """A 32x32 image with no symmetry: noise over a diagonal ramp."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(32), 2 * np.arange(32))[..., None] * np.array([2, 3, 1])
    return np.clip(ramp + rng.integers(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)


def view(pixels, cfg, v, background=(255, 255, 255)) -> np.ndarray:
    return augment.augment_image(pixels, cfg, augment.view_rng(SEED, SHA, v), background)


# --------------------------------------------------------------------------- keys and randomness


def test_view_key_names_the_image_the_settings_and_the_view():
    from vggtl.features import store

    digest = augment.settings_digest(AugmentConfig())
    key = store.view_key(SHA, digest, 3)
    assert key == f"{SHA}:{digest}:3"
    assert (store.content_hash(key), store.view_index(key)) == (SHA, 3)
    assert store.content_hash(SHA) == SHA
    assert len({store.view_key(SHA, digest, v) for v in range(1, 5)}) == 4


def test_augment_digest_ignores_views_and_follows_every_setting():
    base = AugmentConfig()
    assert augment.settings_digest(dataclasses.replace(base, views=5)) == augment.settings_digest(base)
    changed = {
        "horizontal_flip": False,
        "vertical_flip": True,
        "rotation": 30.0,
        "zoom": 0.2,
        "shear": 5.0,
        "width_shift": 0.0,
        "height_shift": 0.2,
        "brightness": 0.0,
    }
    assert changed.keys() == {f.name for f in dataclasses.fields(AugmentConfig)} - {"views"}
    digests = {augment.settings_digest(dataclasses.replace(base, **{k: v})) for k, v in changed.items()}
    assert len(digests) == len(changed) and augment.settings_digest(base) not in digests


def test_view_rng_is_fixed_by_seed_content_and_view():
    def draws(seed, sha, v):
        return augment.view_rng(seed, sha, v).random(4).tolist()

    assert draws(SEED, SHA, 1) == draws(SEED, SHA, 1)
    others = [draws(SEED + 1, SHA, 1), draws(SEED, hashlib.sha256(b"other").hexdigest(), 1), draws(SEED, SHA, 2)]
    assert all(d != draws(SEED, SHA, 1) for d in others)


# --------------------------------------------------------------------------- views


@pytest.mark.parametrize("size", [32, 45])
def test_views_are_reproducible_distinct_uint8_images(size):
    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    original = image.copy()
    cfg = AugmentConfig()  # the defaults: flip, rotation, zoom, shifts, brightness
    views = [view(image, cfg, v) for v in range(1, 5)]
    for v, out in enumerate(views, start=1):
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(view(image, cfg, v), out)  # same (seed, sha, view): same pixels
        assert not np.array_equal(out, image)
    assert len({out.tobytes() for out in views}) == len(views)  # views differ from each other
    np.testing.assert_array_equal(image, original)  # the input is left alone


def test_all_transforms_off_is_the_identity(pixels):
    cfg = only()
    for v in range(1, 6):
        out = view(pixels, cfg, v)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("key", sorted(ALONE))
def test_each_transform_alone_changes_the_image(pixels, key):
    cfg = only(**{key: ALONE[key]})
    outs = [view(pixels, cfg, v) for v in range(1, 9)]
    assert any(not np.array_equal(out, pixels) for out in outs)
    assert all(out.shape == pixels.shape and out.dtype == np.uint8 for out in outs)


@pytest.mark.parametrize("key, mirror", [("horizontal_flip", lambda a: a[:, ::-1]), ("vertical_flip", lambda a: a[::-1])])
def test_flip_alone_mirrors_or_keeps_the_image(pixels, key, mirror):
    flipped = next(v for v in range(1, 50) if flips(v))
    kept = next(v for v in range(1, 50) if not flips(v))
    cfg = only(**{key: True})
    np.testing.assert_array_equal(view(pixels, cfg, flipped), mirror(pixels))
    np.testing.assert_array_equal(view(pixels, cfg, kept), pixels)
    np.testing.assert_array_equal(augment.augment_image(pixels, cfg, Extremes(flip=True)), mirror(pixels))


def test_brightness_only_scales(pixels):
    cfg = only(brightness=0.5)
    for at, factor in ((1.0, 1.5), (0.0, 0.5)):
        out = augment.augment_image(pixels, cfg, Extremes(at))
        np.testing.assert_array_equal(out, np.clip(np.rint(pixels * factor), 0, 255).astype(np.uint8))
    factors = []
    for v in range(1, 9):
        out = view(pixels, cfg, v).astype(np.float64)
        unclipped = out < 255
        factor = out[unclipped].sum() / pixels[unclipped].sum()  # least squares would do as well
        assert 0.5 - 1e-3 <= factor <= 1.5 + 1e-3
        assert np.abs(out - np.clip(pixels * factor, 0, 255)).max() <= 1.0  # one factor for every pixel
        factors.append(round(factor, 2))
    assert len(set(factors)) > 1


@pytest.mark.parametrize("turn, k", [(180.0, 2), (90.0, 3), (-90.0, 1)])
def test_rotation_turns_about_the_image_centre(pixels, turn, k):
    """A quarter or half turn moves no pixel off the grid: no shift, no fill."""
    cfg = only(rotation=abs(turn))
    out = augment.augment_image(pixels, cfg, Extremes(1.0 if turn > 0 else 0.0))
    assert np.abs(out.astype(int) - np.rot90(pixels, k)).max() <= 1  # bilinear rounding only


def test_shifts_translate_and_fill_with_the_background(pixels):
    background = (0, 128, 255)
    right = augment.augment_image(pixels, only(width_shift=0.25), Extremes(1.0), background)
    np.testing.assert_array_equal(right[:, 8:], pixels[:, :-8])
    assert (right[:, :8] == background).all()
    up = augment.augment_image(pixels, only(height_shift=0.25), Extremes(0.0), background)
    np.testing.assert_array_equal(up[:-8], pixels[8:])
    assert (up[-8:] == background).all()


@pytest.mark.parametrize("background", [(0, 128, 255), (255, 255, 255)])
def test_strong_rotation_fills_the_corners_with_the_background(background):
    color = (10, 200, 30)
    solid = np.broadcast_to(np.array(color, np.uint8), (32, 32, 3)).copy()
    for at in (1.0, 0.0):  # +45 and -45 degrees
        out = augment.augment_image(solid, only(rotation=45.0), Extremes(at), background)
        for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
            assert tuple(corner) == background
        assert tuple(out[16, 16]) == color and tuple(out[16, 0]) == color  # edge midpoints stay covered
    default = augment.augment_image(solid, only(rotation=45.0), Extremes())
    assert tuple(default[0, 0]) == (255, 255, 255)  # white unless told otherwise

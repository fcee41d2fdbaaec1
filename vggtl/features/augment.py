"""Deterministic data augmentation for stored training views.

Each training image gets ``augment.views`` augmented versions, generated once
from (seed, content hash, view index) and pushed through the frozen layers
once; they live in the feature store beside the clean features. The
transforms are the familiar ones of Keras' ImageDataGenerator: flips,
rotation, zoom, shear, width/height shift and brightness. Geometric
transforms are one affine warp (bilinear); uncovered pixels take
``data.background`` (Keras' default is 'nearest'; a constant fill does not
smear edge structures into the frame).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np

from vggtl.config import AugmentConfig

# Bump when the transforms below change: stored views are then recomputed.
AUGMENT_VERSION = 2


def settings_digest(cfg: AugmentConfig) -> str:
    """Identifies the view settings (every ``augment.*`` key but ``views``, and
    :data:`AUGMENT_VERSION`): stored views are keyed by it, so changing a
    transform's range or code recomputes the views and nothing else."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "views"}
    settings["algorithm"] = AUGMENT_VERSION
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def view_rng(seed: int, sha256: str, view: int) -> np.random.Generator:
    """Random generator fixed by the seed, the image content and the view index."""
    digest = hashlib.sha256(f"vggtl-augment:{seed}:{sha256}:{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _affine_inverse(size: int, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, ...]:
    """Pillow AFFINE coefficients (output -> input) of a random rotation/shear/zoom/shift."""
    theta = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
    shear = math.radians(rng.uniform(-cfg.shear, cfg.shear))
    zoom_x, zoom_y = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, size=2)
    shift_x = rng.uniform(-cfg.width_shift, cfg.width_shift) * size
    shift_y = rng.uniform(-cfg.height_shift, cfg.height_shift) * size
    c = size / 2.0  # the image centre in Pillow's coordinates (pixel i spans [i, i + 1))
    cos, sin = math.cos(theta), math.sin(theta)
    # forward map around the centre: rotate . shear . zoom
    forward = np.array(
        [[cos, -sin * math.cos(shear) + cos * math.sin(shear)], [sin, cos * math.cos(shear) + sin * math.sin(shear)]]
    ) @ np.diag([zoom_x, zoom_y])
    inverse = np.linalg.inv(forward)
    # out = F (in - c) + c + t  =>  in = F^-1 (out - c - t) + c
    offset = np.array([c, c]) - inverse @ np.array([c + shift_x, c + shift_y])
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def augment_image(pixels: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, background=(255, 255, 255)) -> np.ndarray:
    """One random augmented view of a decoded ``(S, S, 3)`` uint8 image.

    Args:
        pixels: the clean decoded image.
        cfg: the ``augment`` config section (ranges of each transform).
        rng: from :func:`view_rng`, so the view is reproducible.
        background: RGB fill for pixels the warp leaves uncovered.

    Returns:
        A new ``(S, S, 3)`` uint8 array.
    """
    from PIL import Image

    size = pixels.shape[0]
    out = pixels
    if cfg.horizontal_flip and rng.random() < 0.5:
        out = out[:, ::-1]
    if cfg.vertical_flip and rng.random() < 0.5:
        out = out[::-1]
    coefficients = _affine_inverse(size, rng, cfg)
    image = Image.fromarray(np.ascontiguousarray(out))
    image = image.transform((size, size), Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=tuple(background))
    out = np.asarray(image, dtype=np.float32)
    if cfg.brightness:
        out = out * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

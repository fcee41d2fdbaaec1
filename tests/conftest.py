"""Shared fixtures: isolated caches, tiny generated datasets, real-weights lookup."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "vgg16_imagenet_notop.weights.h5"
COLORS = {"red": (200, 40, 40), "green": (40, 180, 40), "blue": (40, 40, 200)}


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.cache/vggtl or ~/.keras during tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(home / "vggtl-cache"))
    monkeypatch.setenv("KERAS_HOME", str(home / "keras"))
    monkeypatch.delenv("VGGTL_VGG16_WEIGHTS", raising=False)


def make_image(path: Path, color, size=32, seed=0, mode="RGB", fmt=None):
    """A noisy solid-color image (so classes are learnable but not trivial)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(0, 30, (size, size, 3)) + np.array(color), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def make_dataset(root: Path, per_class: int = 12, classes=("red", "green", "blue"), size=32, start=0):
    for name in classes:
        for i in range(start, start + per_class):
            make_image(root / name / f"{name}_{i:03d}.png", COLORS[name], size=size, seed=1000 * classes.index(name) + i)
    return root


def write_config(path: Path, root: Path, tmp: Path, **sections) -> Path:
    """A tiny, fast config: 32x32 images, random backbone weights."""
    import yaml

    cfg = {
        "name": "tiny",
        "seed": 7,
        "data": {"root": str(root), "image_size": 32, "split": {"val": 0.25, "test": 0.25}},
        "backbone": {"weights": None},
        "cache": {"path": str(tmp / "cache")},
        "train": {"epochs": 40, "batch_size": 8, "early_stopping_patience": 8, "learning_rate": 0.01},
        "head": {"units": [16]},
        "output": {"dir": str(tmp / "experiments")},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path.write_text(yaml.safe_dump(cfg))
    return path


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray absent: pip install 'vggtl[ray]'")
needs_real_weights = pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=f"{SHARED_WEIGHTS} absent")


def run_pipeline(tmp: Path, cfg: Path, train_argvs) -> Path:
    """extract CONFIG, then train once per argv in ``train_argvs``, inside ``tmp``
    (the working directory and the vggtl cache), asserting every exit status is 0."""
    from vggtl import extract, train

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("VGGTL_CACHE_DIR", str(tmp / "vggtl-cache"))
        assert extract.main([str(cfg), "--no-progress"]) == 0
        for argv in train_argvs:
            assert train.main(argv) == 0
    return tmp

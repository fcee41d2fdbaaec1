"""Leakage audit: identical content and near-duplicates across splits."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from conftest import CLIPART8, REAL_WEIGHTS, make_image, needs_clipart8, needs_real_weights, run_pipeline, write_config
from vggtl.data import SPLITS
from vggtl.training import leakage



class FakeStore:
    """Just what the audit reads: paths, entries, splits, averaged maps."""

    def __init__(self, maps, splits, entries=None):
        self.maps, self.splits = maps, np.asarray(splits)
        self.paths = np.array([f"img{i}.png" for i in range(len(maps))], dtype=object)
        self.entries = np.arange(len(maps)) if entries is None else np.asarray(entries)
        self.feature_shape = maps.shape[1:]
        self.layers, self.feature_shapes = ["maps"], {"maps": maps.shape[1:]}

    def split_rows(self, split):
        return np.flatnonzero(self.splits == split)

    def averaged(self, rows, layer=None, batch_size=256):
        return self.maps[self.entries[np.asarray(rows, dtype=np.int64)]].mean(axis=(1, 2))


def test_only_the_planted_near_duplicate_is_listed():
    rng = np.random.default_rng(0)
    maps = rng.random((30, 2, 2, 64)).astype(np.float32) * (rng.random((30, 1, 1, 64)) > 0.5)  # sparse like ReLU maps
    maps[25] = maps[3] * 1.3 + rng.normal(0, 0.01, maps[3].shape)  # a brighter, noisy copy of a training image
    splits = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    pairs, total = leakage.near_duplicates(FakeStore(maps, splits), 0.98)
    assert total == 1 and pairs[0]["a"] == "img3.png" and pairs[0]["b"] == "img25.png"
    assert (pairs[0]["a_split"], pairs[0]["b_split"]) == ("train", "test") and pairs[0]["cosine"] > 0.99
    assert leakage.near_duplicates(FakeStore(maps, splits), 1.0)[1] == 0  # the copy is not identical


def test_identical_content_is_listed_once_not_as_a_near_duplicate():
    maps = np.random.default_rng(1).random((4, 1, 1, 8)).astype(np.float32)
    fs = FakeStore(maps, ["train", "train", "test", "val"], entries=[0, 1, 0, 2])  # rows 0 and 2: same file content
    assert leakage.near_duplicates(fs, 0.999)[1] == 0


def test_report_lists_a_planted_duplicate_in_a_pre_split_tree(tmp_path):
    root = tmp_path / "data"
    for s, (split, n) in enumerate((("train", 8), ("val", 3), ("test", 3))):
        for k, (c, color) in enumerate((("red", (200, 40, 40)), ("blue", (40, 40, 200)))):
            for i in range(n):
                # a distinct seed per image: hash() of strings changes per process and once gave
                # two images one seed, an identical pair the test did not plant
                make_image(root / split / c / f"{split}_{c}_{i}.png", color, seed=100 * s + 10 * k + i)
    shutil.copy(root / "train" / "red" / "train_red_0.png", root / "test" / "red" / "copy_of_train_red_0.png")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    out = tmp_path / "experiments" / "tiny" / "v1"
    found = json.loads((out / "metrics.json").read_text())["leakage"]["identical"]
    assert [sorted((f["path"], f["split"]) for f in g["files"]) for g in found] == [
        [("test/red/copy_of_train_red_0.png", "test"), ("train/red/train_red_0.png", "train")]
    ]
    report = (out / "report.md").read_text()
    assert "## Leakage audit" in report and "`test/red/copy_of_train_red_0.png` (test)" in report


@pytest.mark.real_weights
@pytest.mark.slow
@needs_real_weights
@needs_clipart8
def test_clipart_planted_duplicate_and_near_duplicate_are_the_only_findings(tmp_path):
    """Real VGG16 features: a pre-split clipart8 subset with one exact copy and one
    resized, JPEG re-encoded copy of training images planted in test."""
    from PIL import Image

    def ordinary(path):  # not one of the 10k x 16k files (~3.5 s of decoding each; tests/test_data.py has big files)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read
            with Image.open(path) as im:
                return im.width * im.height < 20_000_000

    root = tmp_path / "data"
    for cls in ("birds", "fruit", "vehicles"):
        files = [f for f in sorted((CLIPART8 / cls).glob("*.png")) if ordinary(f)][:14]
        for split, chunk in zip(SPLITS, (files[:8], files[8:11], files[11:14])):
            for f in chunk:
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, root / split / cls / f.name)
    birds = sorted((root / "train" / "birds").glob("*.png"))
    shutil.copy(birds[0], root / "test" / "birds" / "exact_copy.png")
    with Image.open(birds[1]) as im:  # what a user's re-export looks like: flattened on white, smaller, JPEG
        rgba = im.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        rgb.resize((rgb.width * 9 // 10, rgb.height * 9 // 10)).save(root / "test" / "birds" / "near_copy.jpg", quality=85)
    # 112 px: a quarter of 224 px's convolutions, and a wider margin: the closest pair not
    # planted (two apples by one author) is at cosine 0.972 here, 0.979 at 224 px (threshold 0.98)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, data={"image_size": 112},
                       backbone={"weights": str(REAL_WEIGHTS)}, train={"epochs": 5})
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    audit = json.loads((tmp_path / "experiments" / "tiny" / "v1" / "metrics.json").read_text())["leakage"]
    assert [sorted(f["path"] for f in g["files"]) for g in audit["identical"]] == [
        sorted(["test/birds/exact_copy.png", f"train/birds/{birds[0].name}"])
    ]
    near = [(p["a"], p["b"]) for p in audit["near_duplicates"]]
    assert near == [(f"train/birds/{birds[1].name}", "test/birds/near_copy.jpg")], audit["near_duplicates"]
    assert audit["near_duplicates"][0]["cosine"] > 0.99
    assert (tmp_path / "experiments" / "tiny" / "v1" / "leakage.png").is_file()

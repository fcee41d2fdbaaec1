"""Tests for vggtl.extract: incremental, crash-safe feature extraction.

Real runs on tiny generated datasets (32x32 PNGs, randomly initialised VGG16
at 32x32 input), in-process through ``extract.run`` / ``extract.main`` and,
where the point is a separate process (no TensorFlow import, kill -9,
concurrent extracts), through ``python -m vggtl.extract`` subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import COLORS, make_dataset, make_image, needs_ray, write_config

from vggtl import config, data, extract, plan
from vggtl.backbones import build, resolve
from vggtl.backbones.spec import default_spec
from vggtl.errors import DataError
from vggtl.features import augment, pipeline, store

N_IMAGES = 36  # make_dataset's default: 3 classes x 12


@dataclass
class Tiny:
    tmp: Path
    root: Path
    cfg_path: Path

    def cfg(self, *overrides: str) -> config.Config:
        return config.load(self.cfg_path, list(overrides))

    def run(self, *overrides: str) -> tuple[extract.ExtractResult, list[str]]:
        logs: list[str] = []
        result = extract.run(self.cfg(*overrides), progress=False, log=logs.append)
        return result, logs

    def store_path(self, *overrides: str) -> Path:
        return plan.resolve(self.cfg(*overrides)).store.path


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Tiny:
    monkeypatch.chdir(tmp_path)  # main() remembers the last extract in ./.vggtl
    root = make_dataset(tmp_path / "data")
    return Tiny(tmp_path, root, write_config(tmp_path / "tiny.yaml", root, tmp_path))


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Relative names of the files extract reads to decode (one read each:
    :func:`vggtl.features.forward.read_as_scanned`, hashed and decoded from memory)."""
    from vggtl.features import forward

    calls: list[str] = []
    real = forward.read_as_scanned

    def spy(file):
        calls.append(f"{Path(file.path).parent.name}/{Path(file.path).name}")
        return real(file)

    monkeypatch.setattr(forward, "read_as_scanned", spy)
    return calls


def features_by_path(path: Path) -> dict[str, np.ndarray]:
    with store.FeatureStore(path) as fs:
        feats = fs.features(np.arange(len(fs.paths)))
        return dict(zip(fs.paths, feats))


def stored_keys(path: Path) -> list[str]:
    with h5py.File(path, "r") as fh:
        return list(fh["entries/key"].asstr()[:])


def stored_entries(path: Path) -> int:
    return len(stored_keys(path))


def leftovers(cache: Path) -> list[str]:
    """Files a finished extract must not leave behind: parts, temporaries, quarantines."""
    return sorted(p.name for p in cache.rglob("*") if ".parts" in str(p) or ".tmp-" in p.name or ".invalid-" in p.name)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def add_problem_files(root: Path) -> None:
    """Three undecodable files and two awkward-but-valid ones."""
    from PIL import Image

    jpeg = make_image(root / "red" / "truncated.jpg", (200, 40, 40), seed=501, fmt="JPEG")
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (root / "green" / "empty.jpg").write_bytes(b"")
    (root / "blue" / "notes.png").write_text("these are my notes, not a picture\n")
    make_image(root / "red" / "cmyk.jpg", (200, 40, 40), seed=502, mode="CMYK", fmt="JPEG")
    rgb = make_image(root / "green" / "palette.png", (40, 180, 40), seed=503)
    pal = Image.open(rgb).convert("P")
    pal.save(rgb, transparency=pal.getpixel((0, 0)))  # some pixels are transparent


# --------------------------------------------------------------------------- cold, warm, incremental


def test_cold_run_computes_all_and_warm_run_nothing(tiny, monkeypatch):
    cold, logs = tiny.run()
    assert (cold.computed, cold.reused, cold.up_to_date, cold.skipped) == (N_IMAGES, 0, False, {})
    assert any(line.startswith(f"extract: {N_IMAGES} image(s)/view(s) to compute, 0 cached") for line in logs)
    path = cold.store_path
    assert path == tiny.store_path() and path.parent == tiny.tmp / "cache"
    with store.FeatureStore(path) as fs:
        assert sorted(fs.paths) == sorted(f.relpath for f in cold.dataset.files)
        assert [fs.class_names[label] for label in fs.labels] == [p.split("/")[0] for p in fs.paths]
        assert fs.feature_shape == (1, 1, 64)  # block5's 512 channels at backbone.width 1/8
        assert fs.settings["width"] == 0.125  # a store of another width is another store
        assert fs.layers == ["block5_pool", "channel_stats"] and fs.augment["views"] == 0
        feats = fs.features(np.arange(N_IMAGES))
    assert sorted(stored_keys(path)) == sorted(f.sha256 for f in cold.dataset.files)  # no views by default
    assert np.isfinite(feats).all()
    assert len(np.unique(feats.reshape(N_IMAGES, -1), axis=0)) == N_IMAGES  # real, distinct activations
    assert leftovers(tiny.tmp / "cache") == []

    before = path.stat().st_mtime_ns

    def must_not_compute(*args, **kwargs):
        raise AssertionError("warm run computed features")

    monkeypatch.setattr(pipeline, "compute_features", must_not_compute)
    warm, _ = tiny.run()
    assert (warm.computed, warm.reused, warm.up_to_date) == (0, N_IMAGES, True)
    assert path.stat().st_mtime_ns == before  # not even rewritten


WARM_RUN = """
import sys
from vggtl import extract
code = extract.main(sys.argv[1:])
print("exit", code)
print("tensorflow imported:", "tensorflow" in sys.modules)
print("keras imported:", "keras" in sys.modules)
"""


def test_warm_rerun_does_not_import_tensorflow(tiny):
    tiny.run()
    proc = subprocess.run(
        [sys.executable, "-c", WARM_RUN, str(tiny.cfg_path), "--no-progress"],
        cwd=tiny.tmp,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "exit 0" in proc.stdout, proc.stderr
    assert f"up to date: {N_IMAGES} images cached, nothing computed" in proc.stdout
    assert "tensorflow imported: False" in proc.stdout
    assert "keras imported: False" in proc.stdout


def test_added_images_are_the_only_ones_computed(tiny, decoded):
    tiny.run()
    before = features_by_path(tiny.store_path())
    make_dataset(tiny.root, per_class=2, start=12)
    decoded.clear()
    result, _ = tiny.run()
    assert (result.computed, result.reused, result.up_to_date) == (6, N_IMAGES, False)
    assert sorted(decoded) == sorted(f"{c}/{c}_{i:03d}.png" for c in ("red", "green", "blue") for i in (12, 13))
    after = features_by_path(result.store_path)
    assert len(after) == N_IMAGES + 6
    for relpath, feats in before.items():
        np.testing.assert_array_equal(after[relpath], feats)


def test_removed_image_is_dropped_from_the_index(tiny):
    first, _ = tiny.run()
    before = features_by_path(first.store_path)
    gone = next(f for f in first.dataset.files if f.split == "train")
    gone.path.unlink()
    result, _ = tiny.run()
    assert (result.computed, result.up_to_date) == (0, False)
    after = features_by_path(result.store_path)
    assert gone.relpath not in after and len(after) == N_IMAGES - 1
    assert stored_entries(result.store_path) == N_IMAGES - 1  # its features are gone too
    for relpath, feats in after.items():
        np.testing.assert_array_equal(feats, before[relpath])


def test_edited_image_is_recomputed_alone(tiny, decoded):
    tiny.run()
    before = features_by_path(tiny.store_path())
    make_image(tiny.root / "red" / "red_000.png", (250, 250, 250), seed=999)  # new content, same name
    decoded.clear()
    result, _ = tiny.run()
    assert (result.computed, result.reused) == (1, N_IMAGES - 1)
    assert decoded == ["red/red_000.png"]
    after = features_by_path(result.store_path)
    assert not np.array_equal(after["red/red_000.png"], before["red/red_000.png"])
    assert stored_entries(result.store_path) == N_IMAGES  # the old content's row was dropped
    for relpath in before.keys() - {"red/red_000.png"}:
        np.testing.assert_array_equal(after[relpath], before[relpath])


def test_duplicate_content_is_computed_once_and_indexed_twice(tiny, decoded):
    shutil.copy(tiny.root / "red" / "red_003.png", tiny.root / "red" / "red_003_copy.png")
    result, _ = tiny.run()
    assert result.computed == N_IMAGES
    assert sum(name.startswith("red/red_003") for name in decoded) == 1
    feats = features_by_path(result.store_path)
    assert len(feats) == N_IMAGES + 1 and stored_entries(result.store_path) == N_IMAGES
    np.testing.assert_array_equal(feats["red/red_003.png"], feats["red/red_003_copy.png"])


# --------------------------------------------------------------------------- awkward files


def test_bad_files_are_skipped_once_and_odd_formats_extracted(tiny, decoded, capsys):
    add_problem_files(tiny.root)
    first, _ = tiny.run()
    bad = {"red/truncated.jpg", "green/empty.jpg", "blue/notes.png"}
    assert set(first.skipped) == bad
    assert "truncated" in first.skipped["red/truncated.jpg"]
    assert first.skipped["green/empty.jpg"] == "empty file (0 bytes)"
    assert "not an image file" in first.skipped["blue/notes.png"]
    assert first.computed == N_IMAGES + 2  # CMYK JPEG and transparent palette PNG
    with store.FeatureStore(first.store_path) as fs:
        assert dict(fs.skipped) == first.skipped
        assert {"red/cmyk.jpg", "green/palette.png"} <= set(fs.paths)
        assert not bad & set(fs.paths)
        assert np.isfinite(fs.features(np.arange(len(fs.paths)))).all()

    decoded.clear()
    capsys.readouterr()
    assert extract.main([str(tiny.cfg_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "skipped 3 file(s) that could not be decoded" in out
    assert "  green/empty.jpg: empty file (0 bytes)" in out
    assert decoded == []
    # the split sizes count the usable images only (as train and the report do)
    with store.FeatureStore(first.store_path) as fs:
        usable = len(fs.paths)
    sizes = [int(line.split()[1]) for line in out.splitlines() if line.strip().split(" ")[0] in ("train", "val", "test")]
    assert sum(sizes) == usable == N_IMAGES + 2

    make_image(tiny.root / "blue" / "new.png", (40, 40, 200), seed=504)
    again, _ = tiny.run()
    assert decoded == ["blue/new.png"]  # the bad files are not decoded again
    assert again.computed == 1 and set(again.skipped) == bad


def test_raising_max_pixels_retries_files_skipped_as_too_big(tiny, decoded):
    make_image(tiny.root / "red" / "big.png", (200, 40, 40), size=64, seed=600)  # 4096 pixels
    small, _ = tiny.run("data.max_pixels=2000")
    assert list(small.skipped) == ["red/big.png"]
    assert "exceeds data.max_pixels = 2,000; raise data.max_pixels" in small.skipped["red/big.png"]

    decoded.clear()
    same, _ = tiny.run("data.max_pixels=2000")
    assert same.up_to_date and list(same.skipped) == ["red/big.png"] and decoded == []

    raised, _ = tiny.run("data.max_pixels=5000")
    assert raised.store_path == small.store_path  # the limit does not change feature values
    assert (raised.computed, raised.skipped, raised.up_to_date) == (1, {}, False)
    assert decoded == ["red/big.png"]
    with store.FeatureStore(raised.store_path) as fs:
        assert "red/big.png" in set(fs.paths) and fs.skipped == []


def test_empty_class_folder_fails_before_writing_anything(tiny, capsys):
    (tiny.root / "purple").mkdir()
    (tiny.root / "purple" / "README.txt").write_text("images coming soon")
    assert extract.main([str(tiny.cfg_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: class folder '{tiny.root / 'purple'}' contains no image" in err
    assert "add images or remove the folder" in err
    assert not (tiny.tmp / "cache").exists()
    assert not (tiny.tmp / ".vggtl").exists()
    with pytest.raises(DataError, match=r"class folder '.*/purple' contains no image"):
        extract.run(tiny.cfg(), progress=False, log=lambda _: None)


# --------------------------------------------------------------------------- settings and damaged stores


def test_changed_image_size_or_layer_uses_a_new_store(tiny):
    base, _ = tiny.run()
    base_mtime = base.store_path.stat().st_mtime_ns
    bigger, _ = tiny.run("data.image_size=64")
    other_layer, _ = tiny.run("backbone.layer=block4_pool")
    paths = {base.store_path, bigger.store_path, other_layer.store_path}
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    assert bigger.computed == other_layer.computed == N_IMAGES  # nothing reused across settings
    assert base.store_path.stat().st_mtime_ns == base_mtime
    with store.FeatureStore(bigger.store_path) as fs:
        assert fs.feature_shape == (2, 2, 64) and fs.settings["image_size"] == 64
    with store.FeatureStore(other_layer.store_path) as fs:
        assert fs.feature_shape == (2, 2, 64) and fs.settings["layers"] == fs.layers == ["block4_pool", "channel_stats"]


def test_corrupt_store_is_quarantined_and_rebuilt(tiny):
    first, _ = tiny.run()
    before = features_by_path(first.store_path)
    first.store_path.write_bytes(os.urandom(10_000))
    result, logs = tiny.run()
    assert result.computed == N_IMAGES and not result.up_to_date
    warnings = [line for line in logs if line.startswith("warning:") and "unusable" in line]
    assert len(warnings) == 1 and "moved aside to" in warnings[0] and "recomputing" in warnings[0]
    assert len(list(first.store_path.parent.glob(f"{first.store_path.name}.invalid-*"))) == 1
    after = features_by_path(result.store_path)
    assert after.keys() == before.keys()
    for relpath, feats in after.items():
        np.testing.assert_array_equal(feats, before[relpath])


# --------------------------------------------------------------------------- fine-tuning layers and augmented views

VIEWS = "augment.views=2"


def features_by_key(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {entry key: features}}`` of every entry (clean features and views)."""
    keys = stored_keys(path)
    with store.FeatureStore(path) as fs:
        rows = np.arange(len(keys))
        return {layer: dict(zip(keys, fs.entry_features(rows, layer))) for layer in fs.layers}


def shas_of(dataset: data.Dataset, *splits: str) -> set[str]:
    return {f.sha256 for f in dataset.files if f.split in splits}


def expected_views(cfg: config.Config, shas) -> set[str]:
    digest = augment.settings_digest(cfg.augment)
    return {store.view_key(sha, digest, v) for sha in shas for v in range(1, cfg.augment.views + 1)}


def assert_same_entries(got: dict, want: dict, keys) -> None:
    for layer in want:
        for key in keys:
            np.testing.assert_array_equal(got[layer][key], want[layer][key], err_msg=f"{layer} {key}")


def test_finetune_stores_both_layers_from_one_pass(tiny, decoded, monkeypatch):
    from vggtl.features import forward

    forward.forget_forwards()  # an earlier test's kept function would leave nothing to count
    built, batches = [], []
    real_model, real_forward = build.feature_model, pipeline.make_forward

    def spy_model(spec, weights, layers, seed, *args, **kwargs):
        built.append(layers)
        return real_model(spec, weights, layers, seed, *args, **kwargs)

    def counting_forward(cfg, weights, log=print, calibration=None):
        forward = real_forward(cfg, weights, log, calibration)

        def counted(pixels):
            batches.append(len(pixels))
            return forward(pixels)

        return counted

    monkeypatch.setattr(build, "feature_model", spy_model)
    monkeypatch.setattr(pipeline, "make_forward", counting_forward)
    tuned, logs = tiny.run("finetune.blocks=1", "augment.views=1", "extract.batch_size=8")
    n_train = len(shas_of(tuned.dataset, "train"))
    total = N_IMAGES + n_train  # clean features + one view per training image

    assert built == [["block5_pool", "block4_pool", "channel_stats"]]  # one model with every output...
    assert sum(batches) == total and len(batches) == -(-total // 8)  # ...run once per image/view
    assert len(decoded) == N_IMAGES and len(set(decoded)) == N_IMAGES  # each file decoded once
    assert (tuned.computed, tuned.reused) == (total, 0)
    assert any(line.startswith(f"extract: {total} image(s)/view(s) to compute, 0 cached") for line in logs)
    with store.FeatureStore(tuned.store_path) as fs:
        assert fs.layers == fs.settings["layers"] == ["block5_pool", "block4_pool", "channel_stats"]
        # 1/8 of VGG16's channels; the statistics: mean and std of blocks 1-4's 8 + 16 + 32 + 64
        assert fs.feature_shapes == {"block5_pool": (1, 1, 64), "block4_pool": (2, 2, 64), "channel_stats": (1, 1, 240)}
        assert fs.feature_shape == (1, 1, 64)  # the head's input comes first
    got = features_by_key(tuned.store_path)
    assert len(got["block4_pool"]) == total and np.isfinite(np.stack(list(got["block4_pool"].values()))).all()

    # the same values as running the base to each layer on its own
    monkeypatch.setattr(build, "feature_model", real_model)
    monkeypatch.setattr(pipeline, "make_forward", real_forward)
    for layer in ("block5_pool", "block4_pool"):
        alone, _ = tiny.run(f"backbone.layer={layer}", "augment.views=1", "extract.batch_size=8")
        assert alone.store_path != tuned.store_path and alone.computed == total
        want = features_by_key(alone.store_path)
        assert want.keys() == {layer, "channel_stats"} and want[layer].keys() == got[layer].keys()
        assert_same_entries(got, want, want[layer])


def test_views_only_for_training_images_deterministic_and_distinct(tiny):
    cfg = tiny.cfg(VIEWS)
    cold, logs = tiny.run(VIEWS)
    train = shas_of(cold.dataset, "train")
    held_out = shas_of(cold.dataset, "val", "test")
    assert train and held_out and not train & held_out
    total = N_IMAGES + 2 * len(train)
    assert (cold.computed, cold.reused, cold.up_to_date) == (total, 0, False)
    assert any(line.startswith(f"extract: {total} image(s)/view(s) to compute, 0 cached") for line in logs)
    assert cold.store_path == tiny.store_path()  # augment settings do not name the store
    keys = stored_keys(cold.store_path)
    views = expected_views(cfg, train)
    assert len(keys) == total and set(keys) == shas_of(cold.dataset, *data.SPLITS) | views
    assert not [k for k in keys if k.split(":", 1)[0] in held_out and k not in held_out]  # no val/test views
    with store.FeatureStore(cold.store_path) as fs:
        assert fs.augment == {"views": 2, "digest": augment.settings_digest(cfg.augment)}
        assert len(fs.paths) == N_IMAGES  # views are entries, not indexed images

    feats = features_by_key(cold.store_path)["block5_pool"]
    for sha in train:
        one, two = (feats[store.view_key(sha, augment.settings_digest(cfg.augment), v)] for v in (1, 2))
        assert not np.array_equal(one, feats[sha]) and not np.array_equal(two, feats[sha])
        assert not np.array_equal(one, two)

    other, _ = tiny.run(VIEWS, f"cache.path={tiny.tmp / 'other-cache'}")
    assert other.store_path != cold.store_path and other.computed == total
    again = features_by_key(other.store_path)
    assert again["block5_pool"].keys() == feats.keys()
    assert_same_entries(again, {"block5_pool": feats}, feats)  # cold runs agree bit for bit


def test_warm_run_with_views_computes_nothing(tiny, monkeypatch):
    first, _ = tiny.run(VIEWS)
    before = first.store_path.stat().st_mtime_ns

    def must_not_compute(*args, **kwargs):
        raise AssertionError("warm run computed features")

    monkeypatch.setattr(pipeline, "compute_features", must_not_compute)
    warm, _ = tiny.run(VIEWS)
    assert (warm.computed, warm.reused, warm.up_to_date) == (0, first.computed, True)
    assert first.store_path.stat().st_mtime_ns == before


def test_changed_augment_setting_recomputes_only_the_views(tiny, decoded):
    first, _ = tiny.run(VIEWS)
    before = features_by_key(first.store_path)["block5_pool"]
    train_files = [f for f in first.dataset.files if f.split == "train"]
    old_views = expected_views(tiny.cfg(VIEWS), shas_of(first.dataset, "train"))
    decoded.clear()

    changed, logs = tiny.run(VIEWS, "augment.rotation=30")

    cfg = tiny.cfg(VIEWS, "augment.rotation=30")
    assert augment.settings_digest(cfg.augment) != augment.settings_digest(tiny.cfg(VIEWS).augment)
    n_views = 2 * len(train_files)
    assert changed.store_path == first.store_path
    assert (changed.computed, changed.reused, changed.up_to_date) == (n_views, N_IMAGES, False)
    assert any(line.startswith(f"extract: {n_views} image(s)/view(s) to compute, {N_IMAGES} cached") for line in logs)
    assert sorted(decoded) == sorted(f.relpath for f in train_files)  # once per image with views to make
    keys = set(stored_keys(changed.store_path))
    new_views = expected_views(cfg, shas_of(first.dataset, "train"))
    assert keys == shas_of(first.dataset, *data.SPLITS) | new_views
    assert not keys & old_views  # the old views dropped out
    after = features_by_key(changed.store_path)["block5_pool"]
    for f in first.dataset.files:  # clean features reused as they were
        np.testing.assert_array_equal(after[f.sha256], before[f.sha256])
    old_digest, new_digest = augment.settings_digest(tiny.cfg(VIEWS).augment), augment.settings_digest(cfg.augment)
    differ = [
        not np.array_equal(after[store.view_key(f.sha256, new_digest, v)], before[store.view_key(f.sha256, old_digest, v)])
        for f in train_files
        for v in (1, 2)
    ]
    assert all(differ)
    with store.FeatureStore(changed.store_path) as fs:
        assert fs.augment == {"views": 2, "digest": new_digest}


def test_added_images_compute_only_their_features_and_views(tiny, decoded):
    first, _ = tiny.run(VIEWS)
    before = features_by_key(first.store_path)["block5_pool"]
    make_dataset(tiny.root, per_class=2, start=12)
    decoded.clear()
    result, _ = tiny.run(VIEWS)
    new = [f for f in result.dataset.files if f.sha256 not in shas_of(first.dataset, *data.SPLITS)]
    # new training images, and old held-out ones that a grown quota boundary moved into train
    newly_training = shas_of(result.dataset, "train") - shas_of(first.dataset, "train")
    assert len(new) == 6 and newly_training, "the test needs some new training images"
    assert result.computed == 6 + 2 * len(newly_training)
    assert result.reused == len(shas_of(result.dataset, *data.SPLITS)) + 2 * len(shas_of(result.dataset, "train")) - result.computed
    assert sorted(decoded) == sorted({f.relpath for f in new} | {f.relpath for f in result.dataset.files if f.sha256 in newly_training})
    keys = set(stored_keys(result.store_path))
    # views of images that left train are kept (another split may need them again)
    assert keys == set(before) | {f.sha256 for f in new} | expected_views(tiny.cfg(VIEWS), newly_training)
    after = features_by_key(result.store_path)["block5_pool"]
    for key, feats in before.items():
        np.testing.assert_array_equal(after[key], feats)


def test_views_skip_undecodable_files_and_share_duplicates(tiny, decoded):
    add_problem_files(tiny.root)
    source = next(f for f in plan.resolve(tiny.cfg()).split().files if f.split == "train" and f.relpath.startswith("red/red_"))
    shutil.copy(source.path, tiny.root / "red" / "copy.png")  # same content, so same split and views
    first, _ = tiny.run(VIEWS)
    bad = {f.sha256 for f in first.dataset.files if f.relpath in first.skipped}
    assert len(first.skipped) == 3 and bad & shas_of(first.dataset, "train"), "the test needs an undecodable training file"
    good = shas_of(first.dataset, *data.SPLITS) - bad
    good_train = shas_of(first.dataset, "train") - bad
    assert first.computed == len(good) + 2 * len(good_train)  # the copy's content counted once
    assert set(stored_keys(first.store_path)) == good | expected_views(tiny.cfg(VIEWS), good_train)
    assert sum(name in ("red/copy.png", source.relpath) for name in decoded) == 1
    decoded.clear()
    warm, _ = tiny.run(VIEWS)
    assert warm.up_to_date and warm.computed == 0 and decoded == []  # no view is owed for a skipped file


def test_fewer_views_drop_the_rest_without_computing(tiny, monkeypatch):
    first, _ = tiny.run(VIEWS)
    before = features_by_key(first.store_path)["block5_pool"]
    clean = shas_of(first.dataset, *data.SPLITS)
    train = shas_of(first.dataset, "train")

    def must_not_compute(*args, **kwargs):
        raise AssertionError("dropping views computed features")

    monkeypatch.setattr(pipeline, "compute_features", must_not_compute)
    one, _ = tiny.run("augment.views=1")
    assert (one.computed, one.reused, one.up_to_date) == (0, N_IMAGES + len(train), False)
    assert set(stored_keys(one.store_path)) == clean | expected_views(tiny.cfg("augment.views=1"), train)
    none, _ = tiny.run("augment.views=0")
    assert (none.computed, none.reused, none.up_to_date) == (0, N_IMAGES, False)
    assert none.store_path == first.store_path
    assert set(stored_keys(none.store_path)) == clean
    after = features_by_key(none.store_path)["block5_pool"]
    for sha in clean:
        np.testing.assert_array_equal(after[sha], before[sha])
    with store.FeatureStore(none.store_path) as fs:
        assert fs.augment["views"] == 0 and len(fs.paths) == N_IMAGES
    assert leftovers(tiny.tmp / "cache") == []
    warm, _ = tiny.run("augment.views=0")
    assert warm.up_to_date and warm.computed == 0


# --------------------------------------------------------------------------- crashes and concurrency


def complete_part_rows(parts: Path) -> int:
    total = 0
    for part in parts.glob("part-*.h5"):
        with h5py.File(part, "r") as fh:
            total += len(fh["entries/key"])
    return total


@pytest.mark.parametrize(
    "overrides",
    [
        ["extract.batch_size=2"],
        ["extract.batch_size=2", "augment.views=1", "finetune.blocks=1"],
        pytest.param(["extract.batch_size=2", "extract.engine=ray"], marks=needs_ray),
    ],
    ids=["plain", "views-and-finetune", "ray-engine"],
)
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch, overrides):
    monkeypatch.chdir(tmp_path)
    root = make_dataset(tmp_path / "data", per_class=20)
    cfg_path = write_config(tmp_path / "tiny.yaml", root, tmp_path)
    cfg = config.load(cfg_path, overrides)
    total = 60 + cfg.augment.views * len(shas_of(plan.resolve(cfg).split(), "train"))  # images + views
    path = plan.resolve(cfg).store.path
    parts = store.parts_dir(path)
    log_file = tmp_path / "killed.log"
    # Two images per part file, so the kill lands after some parts are done.
    env = {**subprocess_env(), pipeline.ROWS_PER_PART_ENV: "2"}
    command = [sys.executable, "-m", "vggtl.extract", str(cfg_path), "--no-progress"]
    for override in overrides:
        command += ["--set", override]
    with open(log_file, "w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # A wait for progress, not a speed check: a Ray start and two TensorFlow
        # actors on an overloaded 2-core machine once took over 120 s to the first part.
        deadline = time.monotonic() + 300
        while not any(parts.glob("part-*.h5")):
            assert proc.poll() is None, f"extract exited before writing a part:\n{log_file.read_text()}"
            assert time.monotonic() < deadline, "no part file after 300 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not path.exists(), "the extract finished before the kill; the test needs it interrupted"
    done = complete_part_rows(parts)
    assert 0 < done < total

    resumed = extract.run(cfg, progress=False, log=lambda _: None)
    assert resumed.computed == total - done  # finished images were not recomputed
    assert resumed.reused == done
    assert leftovers(tmp_path / "cache") == []

    clean_cfg = config.load(cfg_path, [*overrides, f"cache.path={tmp_path / 'clean-cache'}"])
    clean = extract.run(clean_cfg, progress=False, log=lambda _: None)
    assert clean.computed == total
    got, want = features_by_path(resumed.store_path), features_by_path(clean.store_path)
    assert got.keys() == want.keys() and len(got) == 60
    for relpath in want:
        np.testing.assert_array_equal(got[relpath], want[relpath], err_msg=relpath)
    got, want = features_by_key(resumed.store_path), features_by_key(clean.store_path)  # views and every layer
    assert got.keys() == want.keys() == set(cfg.spec.stored_layers)
    assert all(got[layer].keys() == want[layer].keys() and len(got[layer]) == total for layer in want)
    assert_same_entries(got, want, want[cfg.backbone.layer])


HOLD_LOCK = """
import sys, time
from pathlib import Path
from vggtl.features import store
with store.locked(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_extract_is_refused_while_one_holds_the_lock(tiny, capsys):
    path = tiny.store_path()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert extract.main([str(tiny.cfg_path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"is being written by another extract (pid {holder.pid}); wait for it to finish" in err
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_bad_rows_per_part_override_is_refused(tiny, monkeypatch, capsys):
    monkeypatch.setenv(pipeline.ROWS_PER_PART_ENV, "lots")
    assert extract.main([str(tiny.cfg_path), "--no-progress"]) == 2
    assert "$VGGTL_ROWS_PER_PART='lots': expected a positive integer" in capsys.readouterr().err
    assert not (tiny.tmp / "cache").exists()


def test_weights_of_another_network_fail_before_anything_is_written(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "data", per_class=16)
    other = build.build_base(default_spec("mobilenet_v2", 32), resolve.random_weights(1), 1)
    wrong = tmp_path / "mobilenet.weights.h5"
    other.save_weights(wrong)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, backbone={"name": "resnet50", "weights": str(wrong)})
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {wrong}: has no weights for some layers of ResNet50(include_top=False)" in err
    assert "Traceback" not in err
    leftovers = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert all(name.endswith((".lock", ".lock.pid")) and name.startswith(".") for name in leftovers), leftovers  # no store, no parts


def test_inception_store_has_the_tables_shape_and_its_preprocessing(tmp_path, monkeypatch):
    """A valid-padded, 'tf'-preprocessed backbone through the real extract path."""
    root = make_dataset(tmp_path / "data", per_class=6, size=80)
    cfg = write_config(
        tmp_path / "c.yaml", root, tmp_path,
        backbone={"name": "inception_v3", "weights": None, "layer": "mixed7"},
        data={"root": str(root), "image_size": 75, "split": {"val": 0.2, "test": 0.2}},
    )
    monkeypatch.chdir(tmp_path)
    result = extract.run(config.load(cfg), progress=False, log=lambda *_: None)
    with store.FeatureStore(result.store_path) as fs:
        assert fs.settings["backbone"] == "inception_v3"
        assert fs.settings["preprocessing"].startswith("keras.applications.inception_v3.preprocess_input (tf:")
        assert fs.feature_shapes == {"mixed7": (3, 3, 768), "channel_stats": (1, 1, 2112)}  # 75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3
        features = fs.features(np.arange(len(fs.paths)))
    assert features.shape == (18, 3, 3, 768) and np.isfinite(features).all() and features.std() > 0


def test_an_image_edited_during_extract_is_not_stored_under_its_old_hash(tmp_path, monkeypatch):
    """The bytes hashed are the bytes decoded (one read): a file edited between
    the scan and its decoding stops extraction, naming it, instead of storing
    the new picture's features under the old content's hash."""
    import hashlib

    from vggtl import plan
    from vggtl.errors import DataError as DataErr
    from vggtl.features.store import FeatureStore

    root = make_dataset(tmp_path / "data", per_class=6)
    cfg = config.load(write_config(tmp_path / "c.yaml", root, tmp_path))
    monkeypatch.chdir(tmp_path)
    the_plan = plan.resolve(cfg)  # scanned: every file hashed
    edited = root / "red" / "red_002.png"
    old_sha = hashlib.sha256(edited.read_bytes()).hexdigest()
    make_image(edited, (10, 200, 10), seed=5)  # edited after the scan, before extraction decodes it
    with pytest.raises(DataErr, match=r"red_002.png changed while extract was running .* run extract again"):
        extract.run(the_plan, progress=False, log=lambda _: None)
    result = extract.run(cfg, progress=False, log=lambda _: None)  # the data settled: planned again
    with FeatureStore(result.store_path) as fs:
        row = list(fs.paths).index("red/red_002.png")
        assert fs.clean_keys([row]) == [hashlib.sha256(edited.read_bytes()).hexdigest()]
        assert old_sha not in set(fs._entry_keys)


def test_the_forward_function_is_kept_for_the_next_extract_of_the_same_base(tiny, monkeypatch):
    """A second extract of the same base in one process (a notebook adding
    images) builds and traces nothing; another base, layer or seed does; only
    FORWARDS_KEPT bases are kept; and the features are the same either way."""
    from vggtl.features import forward

    forward.forget_forwards()
    built = []
    real = build.feature_model
    monkeypatch.setattr(build, "feature_model", lambda *a, **k: built.append(a[2]) or real(*a, **k))
    first, _ = tiny.run()
    make_image(tiny.root / "red" / "red_new.png", COLORS["red"], seed=99)  # one more image: one more to compute
    again, _ = tiny.run()
    assert (again.computed, again.reused) == (1, N_IMAGES) and len(built) == 1
    for overrides in (["seed=8"], ["backbone.layer=block4_pool"], ["seed=8"]):
        tiny.run(*overrides)
    assert len(built) == 3  # seed 8's base was still kept the second time
    make_image(tiny.root / "blue" / "blue_new.png", COLORS["blue"], seed=98)
    tiny.run()  # the first base was dropped to keep two
    assert len(built) == 4 and len(forward._FORWARDS) == forward.FORWARDS_KEPT
    # a kept function gives what a fresh build gives
    cfg = tiny.cfg()
    weights = resolve.resolve_weights(cfg.spec.arch, None, cfg.seed)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    kept = forward.make_forward(cfg, weights)(x)
    forward.forget_forwards()
    fresh = forward.make_forward(cfg, weights)(x)
    assert len(built) == 5
    for layer in kept:
        np.testing.assert_array_equal(np.asarray(kept[layer]), np.asarray(fresh[layer]))

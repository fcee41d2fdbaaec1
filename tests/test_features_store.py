"""Tests for vggtl.features.store: the HDF5 feature store, part files and the writer lock.

No images and no TensorFlow here: datasets are built from fake content
hashes and features are small random arrays, so every test runs in well
under a second. End-to-end behaviour (real images through the backbone) is
in test_extract.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from vggtl.features import integrity, store
from vggtl.data import Dataset, ImageFile
from vggtl.errors import StoreError

SETTINGS = {"backbone": "vgg16", "layers": ["block5_pool", "block4_pool"], "image_size": 32, "weights_digest": "test"}
OTHER_SETTINGS = {**SETTINGS, "layers": ["block4_pool"]}
SKIP = {"max_pixels": 1000}
# Two layers of different shapes, as with finetune.blocks: 1; the first is the head input.
SHAPES = {"block5_pool": (2, 2, 3), "block4_pool": (4, 4, 3)}
LAYER, BOUNDARY = SHAPES
SHAPE = SHAPES[LAYER]
AUGMENT = {"views": 2, "digest": "0123456789abcdef"}
CLASSES = ["cat", "dog"]


def sha(tag) -> str:
    return hashlib.sha256(str(tag).encode()).hexdigest()


def image(relpath: str, label: int, split: str, content) -> ImageFile:
    return ImageFile(Path("/nowhere") / relpath, relpath, label, split, sha(content))


def fake_features(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``{layer: (n, *shape) float32}`` for every stored layer."""
    rng = np.random.default_rng(seed)
    return {layer: rng.normal(size=(n, *shape)).astype(np.float32) for layer, shape in SHAPES.items()}


def take(feats: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
    """The given rows of every layer."""
    return {layer: f[rows] for layer, f in feats.items()}


def assert_layers_equal(fs: store.FeatureStore, rows, expected: dict[str, np.ndarray], dtype="float32") -> None:
    """``fs.features(rows, layer)`` equals ``expected[layer]`` for every layer, and the
    default layer is the first (the head input)."""
    for layer in SHAPES:
        got = fs.features(rows, layer)
        assert got.dtype == np.float32 and got.shape == (len(rows), *SHAPES[layer])
        np.testing.assert_array_equal(got, expected[layer].astype(dtype).astype(np.float32), err_msg=layer)
    np.testing.assert_array_equal(fs.features(rows), fs.features(rows, LAYER))


def view(content, view: int, digest=AUGMENT["digest"]) -> str:
    """Store key of an augmented view of the image with ``content``."""
    return f"{sha(content)}:{digest}:{view}"


def fmt(settings=SETTINGS, skip=SKIP, dtype="float32", compression=None) -> store.StoreFormat:
    return store.StoreFormat(settings, skip, SHAPES, dtype, compression, AUGMENT)


def write_part(path: Path, contents, features, skipped=(), settings=SETTINGS, skip=SKIP, dtype="float32", keys=None):
    """Publish one complete part file for ``path``; return the writer.

    Rows are keyed by the content hashes of ``contents``, or by ``keys`` if given.
    """
    writer = store.PartWriter(path, fmt(settings, skip, dtype), rows_per_part=10_000)
    keys = [sha(c) for c in contents] if keys is None else list(keys)
    if keys:
        writer.add(keys, features)
    for content, relpath, reason in skipped:
        writer.add_skipped(sha(content), relpath, reason)
    writer.flush()
    return writer


PROVENANCE = {"config": "name: test\n", "weights_source": "test"}


def publish(path: Path, dataset: Dataset, writer: store.PartWriter, dtype="float32", compression=None, view_keys=()) -> dict:
    """Write the store for ``dataset`` from one writer's parts (as extract does)."""
    return store.write_store(
        path, fmt(dtype=dtype, compression=compression), dataset, writer.written, writer.skipped_reasons, PROVENANCE,
        view_keys=view_keys,
    )


def build_store(path: Path, n: int = 6, seed: int = 0, dtype="float32"):
    """A store of ``n`` distinct images; returns (dataset, features by row)."""
    files = [image(f"{CLASSES[i % 2]}/{i}.png", i % 2, ("train", "val", "test")[i % 3], (seed, i)) for i in range(n)]
    feats = fake_features(n, seed)
    writer = write_part(path, [(seed, i) for i in range(n)], feats, dtype=dtype)
    dataset = Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])
    publish(path, dataset, writer, dtype=dtype)
    store.clear_parts(path)
    return dataset, feats


@pytest.fixture
def path(tmp_path) -> Path:
    return store.store_path(tmp_path / "cache", "tiny", SETTINGS)


@pytest.fixture
def feature_reads(monkeypatch):
    """Record how many rows every read of a ``features/<layer>`` dataset returns."""
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        out = real(self, key)
        if self.name.startswith("/features/"):
            reads.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return reads


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------------------------- naming


def test_store_path_depends_on_every_setting(tmp_path):
    a = store.store_path(tmp_path, "tiny", SETTINGS)
    assert a.name.startswith("tiny-") and a.suffix == ".h5"
    assert store.store_path(tmp_path, "tiny", dict(reversed(list(SETTINGS.items())))) == a  # key order irrelevant
    assert store.store_path(tmp_path, "tiny", OTHER_SETTINGS) != a
    assert store.store_path(tmp_path, "tiny", {**SETTINGS, "image_size": 64}) != a


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype, compression", [("float32", None), ("float16", "gzip")])
def test_write_store_round_trip(path, dtype, compression):
    files = [
        image("cat/a.png", 0, "train", "a"),
        image("cat/b.png", 0, "val", "b"),
        image("dog/c.png", 1, "test", "c"),
        image("dog/d.png", 1, "train", "d"),
        image("dog/copy-of-a.png", 1, "train", "a"),  # same content as cat/a.png
        image("cat/broken.png", 0, "train", "broken"),
    ]
    dataset = Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])
    feats = fake_features(4)
    writer = write_part(path, "abcd", feats, skipped=[("broken", "cat/broken.png", "empty file (0 bytes)")], dtype=dtype)

    summary = publish(path, dataset, writer, dtype=dtype, compression=compression)

    assert summary == {"images": 5, "entries": 4, "skipped": 1}
    with store.FeatureStore(path) as fs:
        assert list(fs.paths) == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "dog/copy-of-a.png"]
        assert fs.labels.tolist() == [0, 0, 1, 1, 1]
        assert fs.splits.tolist() == [0, 1, 2, 0, 0]
        assert fs.split_rows("train").tolist() == [0, 3, 4]
        assert fs.split_rows("test").tolist() == [2]
        assert_layers_equal(fs, np.arange(5), take(feats, [0, 1, 2, 3, 0]), dtype)
        assert fs.skipped == [("cat/broken.png", "empty file (0 bytes)")]
        assert fs.class_names == CLASSES
        assert fs.settings == SETTINGS
        assert fs.data_digest == dataset.digest()
        assert fs.config_yaml == "name: test\n"
        assert fs.layers == [LAYER, BOUNDARY]
        assert fs.feature_shapes == SHAPES
        assert fs.feature_shape == SHAPE
        assert fs.augment == AUGMENT
        for layer, shape in SHAPES.items():
            assert fs._fh[f"features/{layer}"].shape == (4, *shape)
            assert fs._fh[f"features/{layer}"].dtype == np.dtype(dtype)
            assert fs._fh[f"features/{layer}"].compression == compression
        assert list(fs._fh["entries/key"].asstr()[:]) == [sha(c) for c in "abcd"]  # the duplicate is stored once
        assert fs.clean_keys([4, 0, 2]) == [sha("a"), sha("a"), sha("c")]
        assert fs._fh.attrs["schema_version"] == store.SCHEMA_VERSION
        assert fs._fh.attrs["settings_key"] == store.settings_key(SETTINGS)
        with pytest.raises(ValueError, match="split must be one of"):
            fs.split_rows("holdout")


def test_write_store_refuses_an_image_without_features_or_reason(path):
    dataset = Dataset(Path("/nowhere"), CLASSES, [image("cat/a.png", 0, "train", "a")], "class-folders", [])
    writer = write_part(path, [], fake_features(0))
    with pytest.raises(StoreError, match=r"internal: no features nor skip reason for \['cat/a.png'\]"):
        publish(path, dataset, writer)
    assert not path.exists()
    assert temporaries(path.parent) == []


def test_feature_store_refuses_missing_garbage_and_foreign_schema(path):
    with pytest.raises(StoreError, match=r"does not exist; run python -m vggtl.extract"):
        store.FeatureStore(path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(StoreError, match=r"cannot be opened .*run extract: it sets a damaged store aside and rebuilds it"):
        store.FeatureStore(path)
    path.unlink()
    build_store(path)
    with h5py.File(path, "r+") as fh:
        fh.attrs["schema_version"] = store.SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=r"its index or attributes do not match their checksum"):
        store.FeatureStore(path)  # edited without re-sealing: refused as altered
    with h5py.File(path, "r+") as fh:
        integrity.seal(fh)  # as a newer vggtl would have written it
    with pytest.raises(StoreError, match=rf"has schema {store.SCHEMA_VERSION + 1}, this vggtl reads {store.SCHEMA_VERSION}; re-run extract"):
        store.FeatureStore(path)


# --------------------------------------------------------------------------- atomic publication


def test_failed_write_leaves_old_store_intact_and_no_temporary(path, monkeypatch):
    old_dataset, old_feats = build_store(path, n=6, seed=0)
    new_files = [image(f"cat/new{i}.png", 0, "train", ("new", i)) for i in range(4)]
    new_dataset = Dataset(Path("/nowhere"), CLASSES, new_files, "class-folders", [])
    writer = write_part(path, [("new", i) for i in range(4)], fake_features(4, seed=1))
    real_copy = store._copy_features
    seen = {}

    def copy_then_fail(out, layer, unique, sources):
        real_copy(out, layer, unique[:2], sources)  # half the rows are in the new file...
        seen["temporaries"] = temporaries(path.parent)
        with store.FeatureStore(path) as fs:  # ...while readers still see the old store
            seen["paths"] = list(fs.paths)
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_copy_features", copy_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        publish(path, new_dataset, writer)

    assert len(seen["temporaries"]) == 1 and seen["temporaries"][0].name.startswith(f".{path.name}.tmp-")
    assert seen["paths"] == [f.relpath for f in old_dataset.files]
    assert temporaries(path.parent) == []
    with store.FeatureStore(path) as fs:
        assert list(fs.paths) == [f.relpath for f in old_dataset.files]
        assert_layers_equal(fs, np.arange(6), old_feats)


# --------------------------------------------------------------------------- part files


def test_complete_parts_are_reused_and_half_written_temporaries_ignored(path):
    writer = store.PartWriter(path, fmt(), rows_per_part=2)
    feats = fake_features(3)
    writer.add([sha(0)], take(feats, slice(0, 1)))
    assert list(store.parts_dir(path).iterdir()) == []  # buffered, below rows_per_part
    writer.add([sha(1), sha(2)], take(feats, slice(1, 3)))  # reaches rows_per_part: published
    parts = sorted(store.parts_dir(path).glob("part-*.h5"))
    assert len(parts) == 1
    writer.add_skipped(sha("bad"), "cat/bad.png", "not an image")
    writer.flush()
    assert len(sorted(store.parts_dir(path).glob("part-*.h5"))) == 2
    assert writer.computed == 3

    # A writer killed mid-part leaves a temporary; a killed store write too
    # (the names _published_h5 writes under).
    with h5py.File(store.parts_dir(path) / ".part-99999999999999999999-dead00.h5.tmp-999-deadbeef", "w") as fh:
        fh.create_dataset("entries/key", data=[sha("half")], dtype=h5py.string_dtype())
    h5py.File(path.with_name(f".{path.name}.tmp-999-deadbeef"), "w").close()
    stale = temporaries(path.parent)
    assert {p.name.split(".tmp-")[0] for p in stale} == {".part-99999999999999999999-dead00.h5", f".{path.name}"}

    state = store.load_state(path, fmt())  # ignored even before cleanup
    assert set(state.sources) == {sha(0), sha(1), sha(2)}
    assert state.skipped == {sha("bad"): "not an image"}
    assert not state.store_ok and state.notes == []

    store.remove_stale_temporaries(path)
    assert temporaries(path.parent) == []
    assert len(list(store.parts_dir(path).glob("part-*.h5"))) == 2  # complete parts kept

    state = store.load_state(path, fmt())
    files = [image(f"cat/{i}.png", 0, "train", i) for i in range(3)] + [image("cat/bad.png", 0, "train", "bad")]
    dataset = Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])
    store.write_store(path, fmt(), dataset, state.sources, state.skipped, PROVENANCE)
    store.clear_parts(path)
    assert not store.parts_dir(path).exists()
    with store.FeatureStore(path) as fs:
        assert_layers_equal(fs, [0, 1, 2], feats)
        assert fs.skipped == [("cat/bad.png", "not an image")]


def test_skip_reasons_reused_only_under_the_same_skip_settings(path):
    write_part(path, [], fake_features(0), skipped=[("big", "cat/big.png", "too many pixels")])
    assert store.load_state(path, fmt()).skipped == {sha("big"): "too many pixels"}
    assert store.load_state(path, fmt(skip={"max_pixels": 10**9})).skipped == {}


def test_store_reports_whether_it_is_current(path):
    dataset, _ = build_store(path)
    state = store.load_state(path, fmt())
    assert state.store_ok and state.store_skip_ok
    assert state.store_data_digest == dataset.digest()
    assert set(state.sources) == {f.sha256 for f in dataset.files}
    assert {src for src, _ in state.sources.values()} == {path}
    other_skip = store.load_state(path, fmt(skip={"max_pixels": 5}))
    assert other_skip.store_ok and not other_skip.store_skip_ok
    # store_keys are the published store's alone, not those of later parts
    assert state.store_keys == {f.sha256 for f in dataset.files}
    part = write_part(path, [], fake_features(1, seed=5), keys=[view((0, 0), 1)])
    with_part = store.load_state(path, fmt())
    assert with_part.store_keys == state.store_keys
    assert with_part.sources == {**state.sources, **part.written}


# --------------------------------------------------------------------------- augmented views


def views_dataset() -> Dataset:
    files = [
        image("cat/a.png", 0, "train", "a"),
        image("dog/b.png", 1, "val", "b"),
        image("cat/c.png", 0, "train", "c"),
        image("dog/broken.png", 1, "train", "broken"),
    ]
    return Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])


def test_views_are_stored_beside_the_clean_features_and_others_drop_out(path):
    dataset = views_dataset()
    wanted_views = [view(c, v) for c in "ac" for v in (1, 2)]
    stale_views = [view("a", 1, digest="fedcba9876543210"), view("b", 1)]  # other augment settings; a val image
    keys = [sha(c) for c in "abc"] + wanted_views + stale_views
    feats = fake_features(len(keys))
    writer = write_part(path, [], feats, keys=keys, skipped=[("broken", "dog/broken.png", "not an image")])

    # views of the skipped image are wanted but left out, not an error
    summary = publish(path, dataset, writer, view_keys=wanted_views + [view("broken", 1), view("broken", 2)])

    assert summary == {"images": 3, "entries": 3 + 4, "skipped": 1}
    with store.FeatureStore(path) as fs:
        assert list(fs._fh["entries/key"].asstr()[:]) == [sha(c) for c in "abc"] + wanted_views
        assert fs.entries.tolist() == [0, 1, 2]  # the index points at clean features only
        assert_layers_equal(fs, [0, 1, 2], take(feats, [0, 1, 2]))
        assert fs.clean_keys([2, 0]) == [sha("c"), sha("a")]
        order = [wanted_views[3], wanted_views[0], wanted_views[3]]
        rows = fs.entry_rows(order)
        assert rows.tolist() == [6, 3, 6]
        for layer in SHAPES:
            np.testing.assert_array_equal(fs.entry_features(rows, layer), feats[layer][[6, 3, 6]])
        np.testing.assert_array_equal(fs.entry_features(rows), fs.entry_features(rows, LAYER))
        assert fs.entry_features(rows, BOUNDARY, dtype="float16").dtype == np.float16
        for stale in stale_views + [view("broken", 1)]:
            with pytest.raises(StoreError, match=rf"has no entry '{stale}'; re-run extract"):
                fs.entry_rows([wanted_views[0], stale])
        with pytest.raises(StoreError, match=r"holds \['block5_pool', 'block4_pool'\], not 'block3_pool'; re-run extract"):
            fs.features([0], "block3_pool")
    state = store.load_state(path, fmt())
    assert state.store_keys == {sha(c) for c in "abc"} | set(wanted_views)
    assert state.skipped == {sha("broken"): "not an image"}


def test_write_store_refuses_a_wanted_view_without_features(path):
    dataset = views_dataset()
    writer = write_part(path, "abc", fake_features(3), skipped=[("broken", "dog/broken.png", "not an image")])
    with pytest.raises(StoreError, match=rf"internal: no features nor skip reason for \['{view('c', 2)}'\]"):
        publish(path, dataset, writer, view_keys=[view("c", 2)])
    assert not path.exists()
    assert temporaries(path.parent) == []


# --------------------------------------------------------------------------- bad files


def test_corrupt_store_and_part_are_quarantined(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(4096))
    good = write_part(path, ["ok"], fake_features(1))
    bad_part = store.parts_dir(path) / "part-00000000000000000001-bad000.h5"
    bad_part.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))  # HDF5 magic, garbage after

    state = store.load_state(path, fmt())

    assert not state.store_ok and not path.exists()
    assert len(list(path.parent.glob(f"{path.name}.invalid-*"))) == 1
    assert not bad_part.exists() and len(list(path.parent.glob(f"{bad_part.name}.invalid-*"))) == 1
    assert set(state.sources) == {sha("ok")} and state.sources[sha("ok")] == good.written[sha("ok")]
    assert len(state.notes) == 2
    assert all("was unusable (cannot be read" in note and "moved aside" in note for note in state.notes)


def test_only_the_newest_set_aside_copy_of_a_store_is_kept(path):
    path.parent.mkdir(parents=True)
    for attempt in range(3):  # the same store found broken three runs in a row
        path.write_bytes(os.urandom(4096))
        state = store.load_state(path, fmt())
    kept = list(path.parent.glob(f"{path.name}.invalid-*"))
    assert len(kept) == 1 and "removed 1 older set-aside copy" in state.notes[0]


def test_store_failing_half_way_is_not_half_used(path):
    """A store readable up to its entries but broken after must contribute nothing."""
    build_store(path)
    with h5py.File(path, "r+") as fh:
        del fh["skipped/reason"]  # entries/ are read first, then this fails
    state = store.load_state(path, fmt())
    assert not state.store_ok
    assert state.sources == {}  # nothing may point at the quarantined file
    assert len(list(path.parent.glob(f"{path.name}.invalid-*"))) == 1
    assert "its index or attributes do not match their checksum" in state.notes[0]  # the seal caught it


def test_files_with_other_settings_are_never_mixed_in(path):
    # A part and a store built with another layer, sitting where this
    # setting's files belong (e.g. copied by hand or a settings-key collision).
    foreign_store = store.store_path(path.parent, "tiny", OTHER_SETTINGS)
    files = [image("cat/a.png", 0, "train", "a")]
    dataset = Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])
    foreign = write_part(foreign_store, ["a"], fake_features(1, seed=9), settings=OTHER_SETTINGS)
    store.write_store(foreign_store, fmt(OTHER_SETTINGS), dataset, foreign.written, {}, PROVENANCE)
    os.replace(foreign_store, path)
    write_part(path, ["b"], fake_features(1, seed=8), settings=OTHER_SETTINGS)
    mine = write_part(path, ["c"], fake_features(1, seed=7))

    state = store.load_state(path, fmt())

    assert set(state.sources) == {sha("c")} and state.sources[sha("c")] == mine.written[sha("c")]
    assert not state.store_ok and not path.exists()
    assert len(state.notes) == 2
    assert all("built with other backbone settings" in note for note in state.notes)
    assert len(list(store.parts_dir(path).glob("part-*.h5"))) == 1


# --------------------------------------------------------------------------- locking

HOLD_LOCK = """
import sys, time
from pathlib import Path
from vggtl.features import store
with store.locked(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_lock_refuses_a_second_holder_in_the_same_process(path):
    with store.locked(path):
        with pytest.raises(StoreError, match=rf"being written by another extract \(pid {os.getpid()}\); wait for it"):
            with store.locked(path):
                pass
    with store.locked(path):  # released on exit
        pass


def test_lock_names_the_holder_and_dies_with_it(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=rf"{path.name} is being written by another extract \(pid {holder.pid}\)"):
            with store.locked(path):
                pass
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the flock
        assert holder.wait(timeout=30) == -signal.SIGKILL
        with store.locked(path):
            assert store.lock_files(path)[1].read_text() == str(os.getpid())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()


# --------------------------------------------------------------------------- reading


def test_features_handles_duplicates_and_any_order(path):
    _, feats = build_store(path, n=6)
    with store.FeatureStore(path) as fs:
        rows = [4, 4, 0, 5, 2, 4, 1]
        assert_layers_equal(fs, rows, take(feats, rows))
        assert_layers_equal(fs, np.array([5, 3, 1]), take(feats, [5, 3, 1]))
        for layer, shape in SHAPES.items():
            empty = fs.features([], layer)
            assert empty.shape == (0, *shape) and empty.dtype == np.float32


def test_float16_store_reads_back_as_float32(path):
    _, feats = build_store(path, n=3, dtype="float16")
    with store.FeatureStore(path) as fs:
        got = {layer: fs.features([2, 0], layer) for layer in SHAPES}
        assert fs.features([2, 0], dtype="float16").dtype == np.float16  # e.g. for a compact training bank
    for layer in SHAPES:
        assert got[layer].dtype == np.float32
        np.testing.assert_array_equal(got[layer], feats[layer][[2, 0]].astype(np.float16).astype(np.float32))


def test_iter_batches_streams_the_requested_rows(path, feature_reads, monkeypatch):
    monkeypatch.setattr(store, "READ_BLOCK", 4)
    _, feats = build_store(path, n=10)
    rows = [7, 1, 3, 3, 9, 0, 5]
    with store.FeatureStore(path) as fs:
        feature_reads.clear()
        batches = fs.iter_batches(rows, batch_size=3)
        first_rows, first_feats = next(batches)
        # lazily, one batch at a time: rows 7, 1, 3 live in blocks 0 and 1 only
        assert len(feature_reads) == 2 and max(feature_reads) <= 4
        got = [(first_rows, first_feats), *batches]
    assert [r.tolist() for r, _ in got] == [[7, 1, 3], [3, 9, 0], [5]]
    for chunk_rows, chunk_feats in got:
        np.testing.assert_array_equal(chunk_feats, feats[LAYER][chunk_rows])
    assert max(feature_reads) <= 4  # never more than one block read at once
    assert len(feature_reads) == 3  # blocks 0 and 1 again for the second batch: from RAM


def test_blocks_are_read_once_verified_and_kept_within_the_budget(path, feature_reads, monkeypatch):
    """verify() reads every block once and keeps it: the readers after it never
    touch the file again. A budget below the store keeps the most recently used
    blocks, never more bytes than the budget, and still reads the right rows."""
    monkeypatch.setattr(store, "READ_BLOCK", 4)
    monkeypatch.setattr(integrity, "VERIFY_BLOCK", 4)
    _, feats = build_store(path, n=10)
    with store.FeatureStore(path) as fs:
        feature_reads.clear()
        fs.verify()
        verified = len(feature_reads)
        assert verified == 2 * 3  # both layers, blocks of rows 0-3, 4-7, 8-9
        for _ in range(2):
            assert_layers_equal(fs, [9, 0, 5, 5], take(feats, [9, 0, 5, 5]))
        assert len(feature_reads) == verified  # every read after verify() from RAM
    block_bytes = 4 * int(np.prod(SHAPE)) * 4  # 4 float32 rows of the head layer
    monkeypatch.setattr(store, "BLOCK_CACHE_BYTES", block_bytes)
    with store.FeatureStore(path) as fs:
        feature_reads.clear()
        rows = [9, 0, 5, 1, 9]
        for _ in range(2):
            np.testing.assert_array_equal(fs.features(rows), feats[LAYER][rows])
            assert fs._cache.size <= block_bytes
        assert len(feature_reads) == 6  # one block kept at a time: each read again
        np.testing.assert_array_equal(fs.features([9, 8]), feats[LAYER][[9, 8]])
        assert len(feature_reads) == 6  # rows 8-9, the block read last, kept


def test_a_kept_block_cannot_be_changed(path):
    _, feats = build_store(path, n=3)
    with store.FeatureStore(path) as fs:
        first = fs.features([0, 1])
        first[:] = 0  # a reader's copy: the store's block is untouched
        np.testing.assert_array_equal(fs.features([0, 1]), feats[LAYER][[0, 1]])
        kept = fs._cache.get((LAYER, 0))
        with pytest.raises(ValueError):
            kept[0] = 0


def test_copying_sparse_sources_reads_bounded_blocks(path, feature_reads, monkeypatch):
    """Keeping 3 of 100 cached rows must not read the 97 others into memory."""
    monkeypatch.setattr(store, "_COPY_ROWS", 4)
    contents = list(range(100))
    feats = fake_features(100)
    writer = write_part(path, contents, feats)
    kept = [0, 50, 99]
    files = [image(f"cat/{i}.png", 0, "train", i) for i in kept]
    dataset = Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])
    feature_reads.clear()
    publish(path, dataset, writer)
    assert feature_reads and max(feature_reads) <= 2 * store._COPY_ROWS
    with store.FeatureStore(path) as fs:
        assert_layers_equal(fs, [0, 1, 2], take(feats, kept))


def test_copying_dense_sources_across_many_chunks(path, monkeypatch):
    monkeypatch.setattr(store, "_COPY_ROWS", 4)
    feats = fake_features(30)
    writer = write_part(path, list(range(30)), feats)
    kept = [i for i in range(30) if i % 7]  # mostly contiguous, some gaps
    files = [image(f"cat/{i}.png", 0, "train", i) for i in reversed(kept)]  # other order than the source
    dataset = Dataset(Path("/nowhere"), CLASSES, files, "class-folders", [])
    publish(path, dataset, writer)
    with store.FeatureStore(path) as fs:
        assert_layers_equal(fs, np.arange(len(kept)), take(feats, kept[::-1]))


def test_store_module_imports_without_fcntl():
    """Windows has no fcntl: the store (and so extract) must import without it."""
    code = "import sys; sys.modules['fcntl'] = None; import vggtl.features.store, vggtl.extract; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_averaged_maps_are_computed_once_for_the_whole_run(path, monkeypatch):
    """``averaged``: each row's clean map averaged over its grid (what the
    linear probe, the leakage audit and the unknown detector pool), for any
    rows in any order, from one pass over the store in batches."""
    _, feats = build_store(path, n=7)
    with store.FeatureStore(path) as fs:
        reads = []
        real = store.FeatureStore.features

        def spy(self, rows, *args, **kwargs):
            reads.append(len(rows))
            return real(self, rows, *args, **kwargs)

        monkeypatch.setattr(store.FeatureStore, "features", spy)
        rows = np.array([5, 0, 5, 3])
        for layer in SHAPES:
            got = fs.averaged(rows, layer, batch_size=3)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, feats[layer][rows].mean(axis=(1, 2)))
        assert reads == [3, 3, 1] * len(SHAPES)  # every row once per layer, 3 maps at a time
        np.testing.assert_array_equal(fs.averaged([1, 2]), feats[LAYER][[1, 2]].mean(axis=(1, 2)))
        assert fs.averaged([], LAYER).shape == (0, SHAPES[LAYER][-1])
        assert len(reads) == 3 * len(SHAPES)  # nothing read again

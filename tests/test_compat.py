"""Stores and artifacts written by vggtl 0.1.0 (tests/fixtures/v0.1.0, see its
README) still load and give the same results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "v0.1.0"


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    """A copy of the fixture (extract and train write beside it), as the working directory."""
    work = tmp_path / "legacy"
    shutil.copytree(FIXTURE, work, symlinks=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "vggtl-cache"))
    return work


def stored(path):
    import h5py

    with h5py.File(path, "r") as fh:
        keys = fh["entries/key"].asstr()[:]
        return {layer: dict(zip(keys, fh[f"features/{layer}"][:])) for layer in fh["features"]}


def test_old_store_is_reused_without_computing(legacy, capsys):
    """0.1.0 stores recorded the split; splits are now made at train time, so
    extract re-publishes the store with its content digest: no image's features
    are computed again (only the augmented views of the images the new split rule
    makes training images), every stored feature kept bit for bit."""
    from vggtl import extract

    store = legacy / "cache" / "legacy-e15454df4469.h5"  # same name: the settings digest did not change
    before = stored(store)
    assert extract.main(["config.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "red/broken.png: not an image file Pillow can read" in out
    after = stored(store)
    added = set(after["block5_pool"]) - set(before["block5_pool"])
    assert all(":" in key for key in added)  # view keys only: no clean features recomputed
    assert f"computed {len(added)}, reused" in out
    assert after.keys() == before.keys() == {"block5_pool", "block4_pool"}
    for layer in before:
        assert set(before[layer]) <= set(after[layer])
        for key, value in before[layer].items():
            np.testing.assert_array_equal(after[layer][key], value)
    assert extract.main(["config.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    # extracted before unknown detection: reused as it is, and said so
    assert f"note: using {Path('cache') / 'legacy-e15454df4469.h5'}, extracted before unknown detection" in out


def test_an_old_store_gets_unknown_detection_by_extract_add_unknown(legacy, capsys):
    from vggtl import extract, train

    assert extract.main(["config.yaml", "--no-progress"]) == 0 and train.main(["config.yaml"]) == 0
    out = capsys.readouterr().out
    assert "unknown detection: unavailable (the feature store was extracted before unknown detection; " \
           "extract --add-unknown adds it" in out
    assert extract.main(["config.yaml", "--no-progress", "--add-unknown"]) == 0
    out = capsys.readouterr().out
    assert "computed" in out and "note: using" not in out  # the config's own store, every image computed
    assert train.main(["config.yaml"]) == 0
    assert "unknown detection (fitted on train, threshold on val)" in capsys.readouterr().out
    stores = sorted(p.name for p in (legacy / "cache").glob("legacy-*.h5"))
    assert len(stores) == 2  # the old one untouched beside the new one


def test_training_on_an_old_store_asks_for_extract_then_works(legacy, capsys):
    from vggtl import extract, train

    assert train.main(["config.yaml"]) == 2
    assert "written by an older vggtl); run python -m vggtl.extract config.yaml first" in capsys.readouterr().err
    assert extract.main(["config.yaml", "--no-progress"]) == 0
    assert train.main(["config.yaml"]) == 0
    new = json.loads((legacy / "experiments/legacy/v2/metrics.json").read_text())
    assert new["test"]["n"] > 0 and len(new["split"]["digest"]) == 64


def test_old_artifact_predicts_as_before(legacy, capsys):
    from vggtl import predict

    assert predict.main(["experiments/legacy", "data", "--json", "--top-k", "3"]) == 1  # broken.png
    captured = capsys.readouterr()
    got = [json.loads(line) for line in captured.out.splitlines()]
    # Trained before unknown detection: it still predicts, and says how to get it.
    assert "cannot say 'unknown' (it was trained by a vggtl without unknown detection); retrain it" in captured.err
    assert all(g["unknown"] is None and g["unknown_score"] is None for g in got if "top" in g)
    want = [json.loads(line) for line in (legacy / "expected_predictions.jsonl").read_text().splitlines()]
    assert [g["path"] for g in got] == [w["path"] for w in want]
    for g, w in zip(got, want):
        assert ("error" in g) == ("error" in w)
        if "top" in w:
            assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]]
            assert [t["probability"] for t in g["top"]] == pytest.approx([t["probability"] for t in w["top"]], abs=1e-5)


def test_old_caffe_preprocess_layer_loads():
    import keras

    import vggtl.backbones.preprocess  # noqa: F401 - registers vggtl's preprocessing layers

    model = keras.saving.load_model(FIXTURE / "caffe_preprocess_model.keras", compile=False)
    x = np.load(FIXTURE / "caffe_model_input.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(FIXTURE / "caffe_model_output.npy"), atol=1e-6)

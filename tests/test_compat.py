"""Stores and artifacts written by vggtl 0.1.0 (tests/fixtures/v0.1.0, see its
README) still load and give the same results."""

from __future__ import annotations

import json
import shutil

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


def test_old_store_is_up_to_date_and_untouched(legacy, capsys):
    from vggtl import extract

    store = legacy / "cache" / "legacy-e15454df4469.h5"
    before = store.read_bytes()
    assert extract.main(["config.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"store: {store.relative_to(legacy)}" in out or str(store) in out
    assert "up to date: 24 images cached, nothing computed" in out
    assert "red/broken.png: not an image file Pillow can read" in out
    assert store.read_bytes() == before


def test_training_on_old_store_matches_old_metrics(legacy, capsys):
    from vggtl import train

    assert train.main(["config.yaml"]) == 0
    old = json.loads((legacy / "experiments/legacy/v1/metrics.json").read_text())
    new = json.loads((legacy / "experiments/legacy/v2/metrics.json").read_text())
    for split in ("val", "test"):
        assert new[split]["accuracy"] == old[split]["accuracy"]
        assert new[split]["confusion_matrix"] == old[split]["confusion_matrix"]
        assert new[split]["loss"] == pytest.approx(old[split]["loss"], rel=0.05, abs=1e-3)
    assert new["phase2"]["kept"] == old["phase2"]["kept"]


def test_old_artifact_predicts_as_before(legacy, capsys):
    from vggtl import predict

    assert predict.main(["experiments/legacy", "data", "--json", "--top-k", "3"]) == 1  # broken.png
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
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

"""End to end on tiny generated images: extract -> train -> artifact -> predict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_dataset, write_config
from vggtl import artifact, extract, predict, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One extract + two identical train runs, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("e2e")
    root = make_dataset(tmp / "data", per_class=16)
    cfg = write_config(tmp / "tiny.yaml", root, tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("VGGTL_CACHE_DIR", str(tmp / "vggtl-cache"))
        assert extract.main([str(cfg), "--no-progress"]) == 0
        assert train.main([]) == 0  # no CONFIG: uses the last extract's config
        assert train.main([str(cfg)]) == 0
    return tmp


def test_versions_and_latest(run_dir):
    name_dir = run_dir / "experiments" / "tiny"
    assert sorted(p.name for p in name_dir.iterdir() if not p.name.startswith(".")) == ["latest", "v1", "v2"]
    assert (name_dir / "latest").resolve() == (name_dir / "v2").resolve()
    assert not list(name_dir.glob(".staging-*"))


def test_same_config_same_metrics(run_dir):
    v1 = (run_dir / "experiments/tiny/v1/metrics.json").read_text()
    v2 = (run_dir / "experiments/tiny/v2/metrics.json").read_text()
    assert v1 == v2
    metrics = json.loads(v1)
    assert set(metrics["test"]["per_class"]) == {"blue", "green", "red"}
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert "linear_probe" in metrics["baseline"]


def test_artifact_contents_and_checksums(run_dir):
    art = artifact.load(run_dir / "experiments/tiny")
    assert art.path.name == "v2"
    assert art.labels == ["blue", "green", "red"]
    for name in ("model.keras", "config.yaml", "metrics.json", "history.json", "manifest.json", "report.md"):
        assert (art.path / name).is_file(), name
    info = art.info
    assert info["weights"]["random"] is True
    assert info["seed"] == 7
    assert len(info["data_digest"]) == 64 and len(info["config_digest"]) == 64
    assert {"python", "tensorflow", "keras", "vggtl"} <= set(info["versions"])
    # the end-to-end model reproduces the head's predictions on cached features
    assert info["end_to_end_check_max_abs_diff"] < train.E2E_TOLERANCE
    history = json.loads((art.path / "history.json").read_text())
    assert len(history["loss"]) == json.loads((art.path / "metrics.json").read_text())["epochs_trained"]


def test_report_flags_random_weights(run_dir):
    report = (run_dir / "experiments/tiny/latest/report.md").read_text()
    assert "**WARNING: the backbone has RANDOM weights" in report
    assert "confusion_matrix.png" in report and "learning_curves.png" in report
    assert "linear probe" in report


def test_learns_the_colors(run_dir):
    """Random conv features of solid noisy colors are still separable: the head must learn."""
    metrics = json.loads((run_dir / "experiments/tiny/latest/metrics.json").read_text())
    assert metrics["val"]["accuracy"] >= 0.75


def test_predict_from_artifact_alone(run_dir, capsys):
    image = next((run_dir / "data" / "red").glob("*.png"))
    code = predict.main([str(run_dir / "experiments/tiny/latest"), str(image), "--json", "--top-k", "2"])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["path"] == str(image)
    assert len(line["top"]) == 2
    assert line["top"][0]["probability"] >= line["top"][1]["probability"]


def test_predict_matches_metrics(run_dir):
    """Predictions through the artifact agree with the evaluation on cached features."""
    art = artifact.load(run_dir / "experiments/tiny/latest")
    manifest = json.loads((art.path / "manifest.json").read_text())
    test_files = [f for f in manifest["files"] if f["split"] == "test"]
    paths = [run_dir / "data" / f["path"] for f in test_files]
    results = list(predict.predict_paths(art, paths, top_k=1))
    accuracy = np.mean([r["top"][0][0] == f["label"] for r, f in zip(results, test_files)])
    assert accuracy == pytest.approx(art.metrics["test"]["accuracy"], abs=1e-6)


def test_predict_bad_inputs(run_dir, capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = next((run_dir / "data" / "blue").glob("*.png"))
    code = predict.main([str(run_dir / "experiments/tiny/latest"), str(good), str(bad)])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.png: skipped: not an image" in captured.err
    assert str(good) in captured.out
    assert predict.main([str(run_dir / "experiments/tiny/latest"), str(tmp_path / "missing.jpg")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert predict.main([str(run_dir / "experiments/tiny/latest"), str(good), "--top-k", "0"]) == 2


def test_train_refuses_stale_store(run_dir, capsys):
    make_dataset(run_dir / "data", per_class=1, classes=("red",), start=100)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(run_dir)
            assert train.main([str(run_dir / "tiny.yaml")]) == 2
        assert "out of date" in capsys.readouterr().err
    finally:
        (run_dir / "data" / "red" / "red_100.png").unlink()


def test_train_without_store(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "data", per_class=16)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert train.main([str(cfg)]) == 2
    assert "run: python -m vggtl.extract" in capsys.readouterr().err


def test_class_weights():
    labels = np.array([0, 0, 0, 1])
    assert train.class_weights(labels, 2, "none") is None
    weights = train.class_weights(labels, 2, "balanced")
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[0] * 3 + weights[1] * 1 == pytest.approx(4)

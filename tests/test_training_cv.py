"""Cross-validation on cached features (train.folds / --folds): train + val folds, test untouched."""

from __future__ import annotations

import json

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import train


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    root = make_dataset(tmp / "data")
    cfg = write_config(tmp / "c.yaml", root, tmp)
    run_pipeline(tmp, cfg, [[str(cfg), "--folds", "3"]])
    return tmp / "experiments" / "tiny" / "v1"


def test_folds_are_reported_for_head_and_probe(cv_run):
    metrics = json.loads((cv_run / "metrics.json").read_text())
    cv = metrics["cv"]
    assert cv["folds"] == 3 and cv["images"] == metrics["split"]["sizes"]["train"] + metrics["split"]["sizes"]["val"]
    for name in ("head", "probe"):
        assert len(cv[name]["per_fold"]) == 3 and 0.0 <= cv[name]["mean"] <= 1.0
    assert cv["head"]["mean"] >= 0.8  # the tiny colors are easy; a broken fold loop scores ~1/3
    report = (cv_run / "report.md").read_text()
    assert "## Cross-validation (3 stratified folds of train + val" in report


def test_too_many_folds_for_a_class_is_refused_before_training(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "data")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    run_pipeline(tmp_path, cfg, [])
    monkeypatch.chdir(tmp_path)
    assert train.main([str(cfg), "--folds", "12"]) == 2
    out, err = capsys.readouterr()
    assert "key 'train.folds': 12 folds need at least 12 images of every class in train + val; too few: blue (" in err
    assert "phase 1" not in out
    assert train.main([str(cfg), "--folds", "1"]) == 2
    assert "key 'train.folds': got 1; use 0 (off) or at least 2 folds" in capsys.readouterr().err

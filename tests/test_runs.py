"""vggtl runs: a run's versions with digests, accuracies and config changes; --compare."""

from __future__ import annotations

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import runs


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cfg = write_config(tmp / "c.yaml", make_dataset(tmp / "data"), tmp)
    run_pipeline(tmp, cfg, [[str(cfg)], [str(cfg), "--set", "train.epochs=3"], [str(cfg), "--set", "data.split.seed=8", "--folds", "2"]])
    return tmp


def test_listing(three_versions, capsys, monkeypatch):
    monkeypatch.chdir(three_versions)
    assert runs.main(["tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["version", "created", "data", "split"]
    v1, v2, v3 = lines[1:]
    assert v1.startswith("v1 ") and v1.endswith("first")
    assert v2.endswith("train.epochs 40->3")
    assert v3.endswith("data.split.seed null->8, train.epochs 3->40, train.folds 0->2")
    assert v1.split()[3] == v2.split()[3] != v3.split()[3]  # seed 8 made another split
    assert v1.split()[2] == v3.split()[2]  # same data
    assert runs.main([]) == 0 and capsys.readouterr().out.strip() == "tiny"


def test_compare(three_versions, capsys, monkeypatch):
    monkeypatch.chdir(three_versions)
    assert runs.main(["tiny", "--compare", "v1", "v3"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "note: different splits" in out
    assert "  data.split.seed: null -> 8" in out and "  train.folds: 0 -> 2" in out
    assert runs.main(["tiny", "--compare", "v1", "v9"]) == 2
    assert "no version 'v9'; versions here: v1, v2, v3" in capsys.readouterr().err
    assert runs.main(["missing"]) == 2

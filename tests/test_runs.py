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


def test_compare_page_shows_the_images_whose_prediction_changed(three_versions, capsys, monkeypatch):
    import csv
    import re

    monkeypatch.chdir(three_versions)
    assert runs.main(["tiny", "--compare", "v1", "v2", "--html", "cmp.html"]) == 0
    assert "page: cmp.html" in capsys.readouterr().out
    html = (three_versions / "cmp.html").read_text()
    assert "<code>train.epochs</code>" in html and "test accuracy" in html
    rows = {}
    for v in ("v1", "v2"):
        with open(three_versions / "experiments/tiny" / v / "predictions.csv", newline="") as fh:
            rows[v] = {(r["path"], r["split"]): r["true"] == r["predicted"] for r in csv.DictReader(fh) if r["split"] != "train"}
    fixed = sum(1 for k, ok in rows["v2"].items() if ok and not rows["v1"][k])
    broken = sum(1 for k, ok in rows["v2"].items() if not ok and rows["v1"][k])
    assert re.search(rf'<h3 id="fixed">[^<]*: {fixed}</h3>', html) and re.search(rf'<h3 id="broken">[^<]*: {broken}</h3>', html)
    assert f"{len(rows['v2'])} val/test image(s) held out in the same split" in html
    assert runs.main(["tiny", "--html", "x.html"]) == 2 and "--html needs --compare" in capsys.readouterr().err


def test_changed_images_pairs_the_same_image_in_the_same_split():
    from vggtl.reports.artifact_page import Prediction
    from vggtl.reports.compare_page import changed_images

    a = [Prediction("x.png", "test", 0, 1, (0.4, 0.6)), Prediction("y.png", "test", 1, 1, (0.1, 0.9)),
         Prediction("z.png", "val", 0, 1, (0.3, 0.7)), Prediction("t.png", "train", 0, 1, (0.2, 0.8))]
    b = [Prediction("x.png", "test", 0, 0, (0.8, 0.2)), Prediction("y.png", "test", 1, 0, (0.7, 0.3)),
         Prediction("z.png", "test", 0, 0, (0.9, 0.1)), Prediction("t.png", "train", 0, 0, (0.9, 0.1))]
    changes = changed_images(a, b)
    assert [x.path for x, _ in changes["fixed"]] == ["x.png"] and [x.path for x, _ in changes["broken"]] == ["y.png"]
    assert changes["compared"] == 2  # z moved split, t is training data

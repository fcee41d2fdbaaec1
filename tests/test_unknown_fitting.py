"""Unknown detection through a whole tiny run: train records it, model.keras computes it, predict says it."""

import json

import numpy as np
import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import config
from vggtl.errors import ConfigError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny data trained with unknown detection (default keep) and without (null)."""
    tmp = tmp_path_factory.mktemp("unknown")
    root = make_dataset(tmp / "data", per_class=12)
    on = write_config(tmp / "on.yaml", root, tmp, name="on", train={"epochs": 8}, output={"gradcam": 1})
    off = write_config(tmp / "off.yaml", root, tmp, name="off", train={"epochs": 8}, predict={"unknown": {"keep": None}})
    run_pipeline(tmp, on, [[str(on)]])
    run_pipeline(tmp, off, [[str(off)]])
    from PIL import Image

    (tmp / "odd").mkdir()  # an image of none of the classes: uniform noise
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp / "odd" / "noise.png")
    return tmp


def _predict_json(tmp, name, paths, capsys):
    from vggtl import predict

    capsys.readouterr()
    predict.main([str(tmp / "experiments" / name / "latest"), *map(str, paths), "--json"])
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_train_records_the_operating_point(runs):
    art = runs / "experiments" / "on" / "latest"
    record = json.loads((art / "unknown.json").read_text())
    metrics = json.loads((art / "metrics.json").read_text())["unknown"]
    assert metrics["available"] and metrics["keep"] == 0.95 == record["keep"]
    assert metrics["threshold"] == pytest.approx(record["threshold"], abs=1e-6)
    assert metrics["val"]["kept"] >= 0.95 and metrics["test"]["n"] == 9
    assert "unknown.npz" in (art / "checksums.sha256").read_text()


def test_the_score_never_changes_a_label(runs):
    on = json.loads((runs / "experiments" / "on" / "latest" / "metrics.json").read_text())
    off = json.loads((runs / "experiments" / "off" / "latest" / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert on[split]["accuracy"] == off[split]["accuracy"]
    assert off["unknown"] == {"available": False, "reason": "predict.unknown.keep is null (off)"}


def test_predict_flags_an_image_of_none_of_the_classes(runs, capsys):
    noise = runs / "odd" / "noise.png"
    inside = sorted((runs / "data" / "red").glob("*.png"))[:2]
    lines, _ = _predict_json(runs, "on", [noise, *inside], capsys)
    by_path = {line["path"]: line for line in lines}
    assert by_path[str(noise)]["unknown"] is True
    assert all(isinstance(line["unknown_score"], float) for line in lines)
    assert [by_path[str(p)]["unknown"] for p in inside] == [False, False]
    threshold = json.loads((runs / "experiments" / "on" / "latest" / "unknown.json").read_text())["threshold"]
    assert by_path[str(noise)]["unknown_score"] > threshold


def test_text_output_says_unknown_with_the_closest_class(runs, capsys):
    from vggtl import predict

    noise = runs / "odd" / "noise.png"
    capsys.readouterr()
    predict.main([str(runs / "experiments" / "on" / "latest"), str(noise)])
    assert "\tunknown (closest: " in capsys.readouterr().out


def test_python_api_returns_both_fields(runs):
    from vggtl.predict import predict_paths

    (result,) = predict_paths(runs / "experiments" / "on" / "latest", [runs / "odd" / "noise.png"])
    assert result["unknown"] is True and result["unknown_score"] > 0


def test_an_artifact_without_detection_says_so_and_how_to_get_it(runs, capsys):
    inside = sorted((runs / "data" / "red").glob("*.png"))[:1]
    lines, err = _predict_json(runs, "off", inside, capsys)
    assert lines[0]["unknown"] is None and lines[0]["unknown_score"] is None
    assert "cannot say 'unknown' (predict.unknown.keep is null (off)); retrain" in err


def test_an_artifact_from_before_unknown_detection_names_retraining(capsys):
    from vggtl.inspect.predictions import unknown_threshold

    class Old:
        path, unknown, metrics = "experiments/x/v1", None, {"test": {}}

    assert unknown_threshold(Old()) is None
    assert "trained by a vggtl without unknown detection); retrain" in capsys.readouterr().err


def test_report_grad_cam_still_replays_the_classifier(runs):
    assert "Grad-CAM" in (runs / "experiments" / "on" / "latest" / "report.html").read_text()


@pytest.mark.parametrize("keep, message", [(0, "above 0 and at most 1"), (1.5, "between 0.0 and 1.0"),
                                           ("most", "predict.unknown.keep")])
def test_keep_outside_its_range_is_refused(keep, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict({"name": "x", "data": {"root": "d"}, "predict": {"unknown": {"keep": keep}}})


def test_keep_null_stores_no_channel_statistics():
    on = config.from_dict({"name": "x", "data": {"root": "d"}})
    off = config.from_dict({"name": "x", "data": {"root": "d"}, "predict": {"unknown": {"keep": None}}})
    assert on.spec.stored_layers == ("block5_pool", "channel_stats") and off.spec.stored_layers == ("block5_pool",)


def test_predict_to_csv_has_the_unknown_columns(runs, tmp_path):
    import csv

    from vggtl import predict

    out = tmp_path / "p.csv"
    assert predict.main([str(runs / "experiments" / "on" / "latest"), str(runs / "odd"), str(runs / "data" / "red"),
                         "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {"unknown", "unknown_score"} <= set(rows[0])
    flags = {row["path"].rsplit("/", 1)[-1]: row["unknown"] for row in rows}
    assert flags["noise.png"] == "true" and sum(v == "false" for v in flags.values()) >= 10


def test_both_reports_show_the_operating_point_and_the_images_it_rejects(runs):
    import re

    art = runs / "experiments" / "on" / "latest"
    unknown = json.loads((art / "metrics.json").read_text())["unknown"]
    page = (art / "report.html").read_text()
    section = page[page.index('<section id="unknown">'):]
    section = section[: section.index("</section>")]
    assert "<svg" in section and f"{unknown['threshold']:.3f}" in section
    assert len(re.findall(r"<figure ", section)) == unknown["test"]["unknown"]  # every in-scope test image called unknown
    report = (art / "report.md").read_text()
    assert "## Unknown images" in report and f"Score > {unknown['threshold']:.4f}" in report
    off = (runs / "experiments" / "off" / "latest" / "report.html").read_text()
    assert "Unavailable: predict.unknown.keep is null (off)." in off


def test_publishing_refuses_a_model_whose_score_is_not_the_evaluated_one(runs, monkeypatch):
    """The end-to-end check compares model.keras's score with the cached features' (here: any difference)."""
    from vggtl import train
    from vggtl.training import run as training_run

    monkeypatch.setattr(training_run, "UNKNOWN_E2E_TOLERANCE", -1.0)
    monkeypatch.chdir(runs)
    before = sorted(p.name for p in (runs / "experiments" / "on").iterdir())
    with pytest.raises(RuntimeError, match="unknown score differs from the cached features'"):
        train.run(config.load(runs / "on.yaml"))
    assert sorted(p.name for p in (runs / "experiments" / "on").iterdir()) == before  # nothing published

"""Report helpers: misclassification ranking, tables, figures written."""

from __future__ import annotations

import numpy as np
import pytest

from vggtl.training import report


def test_worst_misclassified_ranks_confident_errors_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1])
    rows = np.array([10, 11, 12, 13])
    worst = report.worst_misclassified(rows, probs, labels)
    assert [w[0] for w in worst] == [11, 12]
    assert worst[0][1] == 0.8 and worst[0][2] == 1


def test_table():
    lines = report._table(["a", "b"], [[1, 2]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def standalone_svg(path):
    """The file parsed as XML: one SVG document holding its charts and their style."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(path.read_text(encoding="utf-8"))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and root.find(f"{ns}style").text.count(".chart") >= 5
    return root, root.findall(f"{ns}svg")


def test_figures(tmp_path):
    assert report.confusion_table([[3, 1], [0, 4]], ["x", "y"]) == [
        "| true \\ predicted | x | y | images |", "|---|---|---|---|",
        "| **x** | **3 (75%)** | 1 (25%) | 4 |", "| **y** | 0 | **4 (100%)** | 4 |"]
    curves = {"loss": [1, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]}
    watched = {**curves, "val_cross_entropy": [1.0, 0.6], "val_accuracy_final": [0.5, 0.75], "best_epoch": 2}
    report.write_curves({"phase1": watched, "phase2": curves}, tmp_path / "c.svg")  # and an older artifact's curves
    root, charts = standalone_svg(tmp_path / "c.svg")
    assert len(charts) == 4  # loss and accuracy of each phase, two per row
    assert [(c.get("x"), c.get("y")) for c in charts][:3] == [("0", "0"), ("492", "0"), ("0", str(int(root.get("height")) - int(charts[2].get("height"))))]
    text = (tmp_path / "c.svg").read_text()
    assert "phase 1 (head on cached features): loss" in text and "phase 2 (fine-tuning): accuracy" in text
    assert 'data-epoch="2" data-value="0.750000"' in text  # the best epoch's value of the table's model


def test_calibration_bins_and_ece():
    import numpy as np

    from vggtl.training.metrics import calibration

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    cal = calibration(y, probs)
    # bins: 0.6 (1 image, right), 0.8 (1, right), 0.9 (2, one right)
    assert [b["count"] for b in cal["bins"]] == [1, 1, 2]
    expected = (abs(1 - 0.6) + abs(1 - 0.8) + 2 * abs(0.5 - 0.9)) / 4
    assert cal["ece"] == pytest.approx(expected, abs=1e-6)
    perfect = calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect["ece"] == 0.0


def test_reliability_plot(tmp_path):
    from vggtl.training.metrics import calibration

    import numpy as np

    report.write_reliability(calibration(np.array([0, 1, 1]), np.array([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])), tmp_path / "r.svg")
    _, charts = standalone_svg(tmp_path / "r.svg")
    assert len(charts) == 1 and "test reliability (ECE" in (tmp_path / "r.svg").read_text()


def test_the_image_grids_show_extractions_thumbnails_and_decode_nothing_again(tmp_path, monkeypatch):
    """worst_misclassified.png and leakage.png paste the thumbnails extraction
    cached (report.html's too): a giant file is never decoded a second time."""
    from types import SimpleNamespace

    from PIL import Image

    from conftest import make_image
    from vggtl.data import DecodeSettings, thumbnails
    from vggtl.files import sha256_file

    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "cache"))
    decode = DecodeSettings(image_size=64)
    red = make_image(tmp_path / "data" / "red.png", (200, 40, 40), size=64)
    # the cache holds a blue picture for the red file's content: what the grid shows comes from the cache
    thumbnails.remember(sha256_file(red), decode, np.full((64, 64, 3), (40, 40, 200), np.uint8))
    monkeypatch.setattr(DecodeSettings, "decode", lambda self, path: pytest.fail(f"decoded {path} again"))
    cfg = SimpleNamespace(spec=SimpleNamespace(decode=decode))
    report.plot_thumbnails([("red.png", "red\ntitle"), ("deleted.png", "deleted since")], 4, cfg, tmp_path / "data", tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid:
        pixels = np.asarray(grid.convert("RGB"), np.int16)
    title_h, pad = 2 * (report.TITLE_FONT + 4), 8
    cell = pixels[pad + title_h : pad + title_h + 64, pad : pad + 64]
    assert np.abs(cell - (40, 40, 200)).max() < 12  # the cached (JPEG) thumbnail
    second = pixels[pad + title_h : pad + title_h + 64, pad + report.THUMBNAIL + 40 :][:, :64]
    # a file gone since extraction: "(cannot be decoded)" in grey in its place, not a crash
    assert (np.ptp(second, axis=2) < 10).all() and (second < 200).any()

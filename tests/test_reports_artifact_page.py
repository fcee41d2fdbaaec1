"""report.html: one self-contained page per artifact, its galleries holding
exactly each confusion cell's images, curves that agree with the table,
missing images named, export rows added, and a real browser clicking it."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_dataset, make_image, page_in_chromium, run_pipeline, write_config
from vggtl.reports import artifact_page
from vggtl.training import artifact



@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    """A tiny trained artifact whose data has red images filed as green (so the test split has errors)."""
    tmp = tmp_path_factory.mktemp("page")
    root = make_dataset(tmp / "data")
    for i in range(6):
        make_image(root / "green" / f"mislabeled_{i}.png", COLORS["red"], seed=500 + i)
    cfg = write_config(tmp / "c.yaml", root, tmp)
    run_pipeline(tmp, cfg, [[str(cfg)]])
    return tmp / "experiments" / "tiny" / "v1"


@pytest.fixture
def copy(art, tmp_path) -> Path:
    """A copy of the artifact a test may change (the module's stays as published)."""
    return Path(shutil.copytree(art, tmp_path / "v1", symlinks=True))


def predictions(path: Path) -> list[dict]:
    with open(path / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def gallery_paths(html: str, gallery_id: str) -> list[str]:
    block = re.search(rf'<div class="gallery" id="{gallery_id}".*?</div>\s*</div>', html, re.S)
    return re.findall(r'<figure [^>]*data-path="([^"]+)"', block.group(0)) if block else []


def test_every_confusion_cell_opens_exactly_its_images(art):
    html = (art / "report.html").read_text(encoding="utf-8")
    labels = json.loads((art / "labels.json").read_text())
    rows = predictions(art)
    for split in ("test", "val"):
        for i, true in enumerate(labels):
            for j, predicted in enumerate(labels):
                expected = sorted(r["path"] for r in rows if (r["split"], r["true"], r["predicted"]) == (split, true, predicted))
                button = re.search(rf'<button class="cell"[^>]*data-gallery="g-{split}-{i}-{j}"[^>]*>(\d+)</button>', html)
                assert int(button.group(1)) == len(expected)
                assert sorted(gallery_paths(html, f"g-{split}-{i}-{j}")) == expected


def test_the_page_is_self_contained(art):
    html = (art / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert all(src.startswith("data:image/") for src in re.findall(r'<img src="([^"]*)"', html))
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "report.html" in (art / "report.md").read_text()  # the summary points at the page
    artifact.load(art)  # listed in checksums.sha256 like every file


def test_worst_errors_have_grad_cam_overlays(art):
    rows = [r for r in predictions(art) if r["split"] == "test" and r["true"] != r["predicted"]]
    html = (art / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="worst">'):html.index('<section id="calibration">')]
    assert rows, "the planted mislabeled images should give test errors"
    shown = re.findall(r'<figure [^>]*data-path="([^"]+)"', section)
    assert len(shown) == min(len(rows), 6)  # output.gradcam's default
    assert section.count('alt="Grad-CAM of') == len(shown)
    assert "at most 6 are shown" in section


def test_the_worst_errors_are_explained_from_the_cached_features_and_rendered_again_without_the_model(art, copy):
    from vggtl.features.store import FeatureStore
    from vggtl.inspect import gradcam

    shown = artifact_page.read_gradcams(art)
    assert "the head's input: 1x1, from the cached features" in shown[1]  # 32 px images: block5_pool is 1x1
    chosen, _ = artifact_page.worst_errors(artifact_page.read_predictions(art / "predictions.csv", ["blue", "green", "red"]), 6)
    assert sorted(shown[0]) == sorted((p.path, p.predicted) for p in chosen)
    # the saved maps are the head's Grad-CAM on the stored maps of those images
    model = artifact.load(art)
    head = artifact.load_keras(art / "model.keras").get_layer("head")
    store = FeatureStore(next((art.parents[2] / "cache").glob("*.h5")))
    rows = [list(store.paths).index(p.path) for p in chosen]
    expected = gradcam.gradcams_at_input(head, store.features(rows), [p.predicted for p in chosen])
    for p, heat in zip(chosen, expected):
        np.testing.assert_allclose(shown[0][(p.path, p.predicted)], heat, atol=1e-3)
    store.close()
    assert model.checksums["gradcam.npz"]  # sealed like every file
    # rendered again (as vggtl export does) without model.keras: the saved maps, no model run
    (copy / "model.keras").unlink()
    html = artifact_page.render(copy).read_text(encoding="utf-8")
    section = html[html.index('<section id="worst">'):html.index('<section id="calibration">')]
    assert section.count('alt="Grad-CAM of') == len(chosen) and "from the cached features" in section


def test_the_page_decodes_no_image_file_again(art, copy, monkeypatch):
    """Every picture on the page, the worst errors' Grad-CAM overlays included,
    is drawn from the thumbnails extraction cached: a giant file costs seconds
    to decode, once."""
    from vggtl.data import DecodeSettings

    monkeypatch.setenv("VGGTL_CACHE_DIR", str(art.parents[2] / "vggtl-cache"))  # the cache extraction wrote
    monkeypatch.setattr(DecodeSettings, "decode", lambda self, path: pytest.fail(f"decoded {path} again"))
    html = artifact_page.render(copy).read_text(encoding="utf-8")
    section = html[html.index('<section id="worst">'):html.index('<section id="calibration">')]
    shown = re.findall(r'<figure [^>]*data-path="([^"]+)"', section)
    assert shown and section.count('alt="Grad-CAM of') == len(shown) and 'id="missing-images"' not in html


def test_the_headline_sentences_are_apart(art):
    html = (art / "report.html").read_text(encoding="utf-8")
    split = html[html.index("<p>Split: seed"):]
    split = split[: split.index("</p>")]
    assert "skipped" in split and not re.search(r"\.(No|<b>)", split)  # "No file skipped. No phase hit ..."


def test_the_curves_best_epoch_value_is_the_tables(art):
    metrics = json.loads((art / "metrics.json").read_text())
    html = (art / "report.html").read_text(encoding="utf-8")
    shown = re.search(r'class="curve-best" data-phase="phase1">([0-9.]+)<', html).group(1)
    assert float(shown) == pytest.approx(metrics["val"]["accuracy"], abs=5e-4)
    dots = re.findall(r'class="best-dot" data-epoch="(\d+)" data-value="([0-9.]+)"', html)
    assert float(dots[-1][1]) == pytest.approx(metrics["val"]["accuracy"], abs=1e-6)
    assert int(dots[-1][0]) == metrics["phase1"]["best_epoch"]


def test_curves_mark_the_averaged_models_accuracy_not_the_heads():
    history = {"loss": [1.0, 0.5, 0.4], "accuracy": [0.5, 0.8, 0.9], "val_cross_entropy": [0.9, 0.6, 0.7],
               "val_accuracy": [0.4, 0.5, 0.5], "val_accuracy_final": [0.5, 0.75, 0.7], "best_epoch": 2, "stopped_early": True}
    curves = artifact_page.phase_curves("phase1", history)
    assert curves["best_val_accuracy"] == 0.75 and curves["has_probe"]
    assert 'data-epoch="2" data-value="0.750000"' in curves["accuracy"]
    assert 'data-epoch="2" data-value="0.600000"' in curves["loss"]  # the watched cross-entropy, not L2's val_loss
    assert "head + probe average" in curves["accuracy"]


def test_images_moved_since_training_are_named_not_broken(art, copy, tmp_path):
    manifest = json.loads((copy / "manifest.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(manifest["data_root"], moved)
    gone = [r["path"] for r in predictions(copy) if r["split"] == "test"][:3]
    for path in gone:
        (moved / path).unlink()
    manifest["data_root"] = str(moved)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    html = artifact_page.render(copy).read_text(encoding="utf-8")
    assert "3 image(s) could not be read from" in html
    for path in gone:
        assert f'<div class="missing">missing: {path}</div>' in html
    assert all(src.startswith("data:image/") and len(src) > 40 for src in re.findall(r'<img src="([^"]*)"', html))


def test_three_exports_give_three_rows_in_both_reports(copy):
    from vggtl.exports.report import add_to_artifact
    from vggtl.exports.run import Result

    for n, fmt in enumerate(("savedmodel", "tflite", "tflite")):
        add_to_artifact(copy, [Result(fmt, "none" if n < 2 else "int8", f"/exports/{fmt}-{n}", size_bytes=10**6 * (n + 1),
                                      verified=True, agreement=1.0)])
    rows = json.loads((copy / "exports.json").read_text())
    assert [r["path"] for r in rows] == ["/exports/savedmodel-0", "/exports/tflite-1", "/exports/tflite-2"]
    md = (copy / "report.md").read_text()
    assert md.count("## Exports") == 1 and all(f"| {r['path']} |" in md for r in rows)
    html = (copy / "report.html").read_text()
    assert html.count('<tr class="export-row">') == 3 and all(r["path"] in html for r in rows)
    artifact.load(copy)  # resealed: the changed and added files verify


def test_a_browser_opens_the_page_and_a_cell_shows_exactly_its_images(art):
    labels = json.loads((art / "labels.json").read_text())
    rows = [r for r in predictions(art) if r["split"] == "test"]
    true, predicted = next((r["true"], r["predicted"]) for r in rows if r["true"] != r["predicted"])
    expected = sorted(r["path"] for r in rows if (r["true"], r["predicted"]) == (true, predicted))
    with page_in_chromium(art / "report.html") as page:
        assert page.locator(".gallery:visible").count() == 0
        page.click(f'button[data-gallery="g-test-{labels.index(true)}-{labels.index(predicted)}"]')
        visible = page.locator(".gallery:visible")
        assert visible.count() == 1
        shown = sorted(visible.locator("figure").evaluate_all("els => els.map(e => e.dataset.path)"))
        assert shown == expected
        assert visible.locator("img").evaluate_all("els => els.every(e => e.complete && e.naturalWidth > 0)")
        page.click('button[data-gallery="g-test-0-0"]')  # another cell of the same matrix replaces it
        assert page.locator(".gallery:visible").get_attribute("id") == "g-test-0-0"
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: wide tables scroll inside their box
        assert page.evaluate("document.documentElement.scrollWidth") <= 390

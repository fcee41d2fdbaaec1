"""vggtl audit end to end on a tiny generated dataset: findings, files, --apply and its undo, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_dataset, make_image, page_in_chromium, write_config
from vggtl import audit, extract, train


# Random-weight features of noisy single-colour images are all alike (cosine
# ~0.996): only exact copies count as duplicates here.
AUDIT = {"near_duplicate": 0.99999}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) with its content hash."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A tiny tree with one mislabeled image (a red one in green/) and one red
    image copied into blue/ (one image, two labels), extracted and audited."""
    tmp = tmp_path_factory.mktemp("audit")
    root = make_dataset(tmp / "data", per_class=12)
    make_image(root / "green" / "green_mislabeled.png", COLORS["red"], seed=4242)
    shutil.copy(root / "red" / "red_003.png", root / "blue" / "copy_of_red_003.png")
    cfg = write_config(tmp / "c.yaml", root, tmp, audit=AUDIT)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("VGGTL_CACHE_DIR", str(tmp / "vggtl-cache"))
        assert extract.main([str(cfg), "--no-progress"]) == 0
        assert audit.main([str(cfg)]) == 0
    return tmp, cfg, root, tmp / "experiments" / "tiny" / "audit" / "latest"


def read_issues(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_planted_problems_come_first(audited):
    _, _, _, out = audited
    rows = read_issues(out / "issues.csv")
    assert list(rows[0])[:6] == ["rank", "path", "kind", "given", "suggested", "score"]
    first = rows[0]
    assert first["kind"] == "duplicate" and {first["given"], first["suggested"]} == {"blue", "red"}
    assert {first["path"], first["other"]} == {"blue/copy_of_red_003.png", "red/red_003.png"}
    assert "identical files, two labels" in first["detail"]
    label_rows = [r for r in rows if r["kind"] == "label"]
    # Both red images outside red/ (the mislabeled one and the copy) are label issues, suggested red.
    assert {r["path"] for r in label_rows[:2]} == {"green/green_mislabeled.png", "blue/copy_of_red_003.png"}
    assert all(r["suggested"] == "red" and r["likely"] == "yes" for r in label_rows[:2])
    # the detail gives the three measures the score ranks
    detail = label_rows[0]["detail"]
    assert "p(given) " in detail and "closer to another class" in detail and "SVM margin +" in detail


def test_publishes_csv_json_and_page_and_prints_the_top_ten(audited, capsys):
    tmp, cfg, _, out = audited
    assert out.resolve().name == "v1"
    summary = json.loads((out / "audit.json").read_text())
    assert summary["images"] == 38 and summary["classes"] == ["blue", "green", "red"]
    assert summary["duplicate_pairs"]["two_labels"] == 1 and summary["settings"]["folds"] == 5
    assert summary["learning_curve"]["fractions"] == [0.1, 0.25, 0.5, 0.75, 1.0]
    assert "tensorflow" not in summary["versions"]
    html = (out / "audit.html").read_text()
    assert "green/green_mislabeled.png" in html and "data:image/jpeg;base64," in html
    # how to act on it names the config the audit ran with
    assert summary["apply_command"].endswith(f"vggtl.audit {cfg} --apply EDITED.csv")
    assert f"{cfg} --apply YOUR-COPY.csv" in html
    assert (out / "checksums.sha256").is_file()


def test_a_browser_shows_each_issue_beside_examples_and_fetches_nothing(audited):
    _, _, _, out = audited
    with page_in_chromium(out / "audit.html") as page:
        listed = [r["path"] for r in read_issues(out / "issues.csv")]
        assert page.locator(".issue").evaluate_all("els => els.map(e => e.dataset.path)") == listed
        mislabeled = page.locator('.issue[data-path="green/green_mislabeled.png"]')
        shown = mislabeled.locator("figure").evaluate_all("els => els.map(e => e.dataset.path)")
        assert shown[0] == "green/green_mislabeled.png" and len(shown) == 7  # itself, 3 of green/, 3 of red/
        assert all(p.startswith("green/") for p in shown[1:4]) and all(p.startswith("red/") for p in shown[4:])
        assert page.locator("img").evaluate_all("els => els.every(e => e.complete && e.naturalWidth > 0)")
        assert page.locator("#learning-curve svg").count() == 1
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_same_store_and_seed_same_issues(audited, monkeypatch):
    tmp, cfg, _, out = audited
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp / "vggtl-cache"))
    assert audit.main([str(cfg), "--no-curve"]) == 0
    again = tmp / "experiments" / "tiny" / "audit" / "v2"
    assert (again / "issues.csv").read_bytes() == (out.parent / "v1" / "issues.csv").read_bytes()
    assert json.loads((again / "audit.json").read_text())["learning_curve"] is None


def test_apply_then_its_undo_log_restores_the_tree_byte_for_byte(audited, tmp_path, monkeypatch, capsys):
    src_tmp, _, src_root, out = audited
    root = tmp_path / "data"
    shutil.copytree(src_root, root)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = tree_digest(root)
    rows = read_issues(out / "issues.csv")
    mislabeled = next(r for r in rows if r["path"] == "green/green_mislabeled.png")
    mislabeled["action"] = "relabel"
    rows[0]["action"] = "exclude"  # the copy in blue/
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert audit.main([str(cfg), "--apply", str(edited)]) == 0
    printed = capsys.readouterr().out
    after = tree_digest(root)
    assert "red/green_mislabeled.png" in after and "green/green_mislabeled.png" not in after
    assert rows[0]["path"] not in after and f".vggtl-excluded/{rows[0]['path']}" in after
    untouched = {k: v for k, v in before.items() if k not in (rows[0]["path"], "green/green_mislabeled.png")}
    assert all(after[k] == v for k, v in untouched.items())  # nothing else changed
    undo = next(Path(tmp_path / "experiments" / "tiny" / "audit" / "undo").glob("undo-*.csv"))
    assert str(undo) in printed
    assert audit.main([str(cfg), "--apply", str(undo)]) == 0
    assert tree_digest(root) == before


def test_train_says_how_many_labels_changed(audited, tmp_path, monkeypatch, capsys):
    _, _, src_root, _ = audited
    root = tmp_path / "data"
    shutil.copytree(src_root, root)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, train={"epochs": 2})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "vggtl-cache"))
    assert extract.main([str(cfg), "--no-progress"]) == 0 and train.main([str(cfg)]) == 0
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("path,action,label\ngreen/green_mislabeled.png,relabel,red\ngreen/green_000.png,exclude,\n")
    assert audit.main([str(cfg), "--apply", str(relabel)]) == 0
    capsys.readouterr()
    assert extract.main([str(cfg), "--no-progress"]) == 0 and train.main([str(cfg)]) == 0
    assert "labels since v1: 1 image(s) relabelled, 0 added, 1 removed" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("path,action,label\nred/nope.png,relabel,blue\n", "'red/nope.png' is not an image of data.root"),
    ("path,action,label\nred/red_000.png,relabel,purple\n", "label 'purple' is not a class; classes: blue, green, red"),
    ("path,action\nred/red_000.png,delete\n", "action 'delete' is not one of"),
    ("file,what\nx,y\n", "no 'path' or 'action' column"),
    ("path,action,label\nred/red_000.png,relabel,blue\nred/red_000.png,exclude,\n", "listed twice"),
])
def test_a_bad_apply_file_changes_nothing(audited, tmp_path, monkeypatch, capsys, content, message):
    _, _, src_root, _ = audited
    root = tmp_path / "data"
    shutil.copytree(src_root, root)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    before = tree_digest(root)
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    assert audit.main([str(cfg), "--apply", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert tree_digest(root) == before


def test_audit_before_extract_or_on_a_stale_store_says_run_extract(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", per_class=6)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "vggtl-cache"))
    assert audit.main([str(cfg)]) == 2
    assert "no feature store for this config" in capsys.readouterr().err
    assert extract.main([str(cfg), "--no-progress"]) == 0
    make_image(root / "red" / "new.png", COLORS["red"], seed=99)
    assert audit.main([str(cfg)]) == 2
    assert "out of date" in capsys.readouterr().err
    assert not (tmp_path / "experiments" / "tiny" / "audit").exists()


def test_a_class_smaller_than_the_folds_is_named(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", per_class=6)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "vggtl-cache"))
    assert extract.main([str(cfg), "--no-progress"]) == 0
    assert audit.main([str(cfg), "--set", "audit.folds=7"]) == 2
    err = capsys.readouterr().err
    assert "key 'audit.folds': 7 folds need at least 7 images of every class" in err and "blue (6)" in err


def test_a_fine_tuning_store_gives_the_label_model_its_lower_layer_too(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", per_class=8)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, audit={**AUDIT, "learning_curve": False}, finetune={"blocks": 1})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp_path / "vggtl-cache"))
    assert extract.main([str(cfg), "--no-progress"]) == 0
    assert audit.main([str(cfg)]) == 0
    summary = json.loads((tmp_path / "experiments" / "tiny" / "audit" / "latest" / "audit.json").read_text())
    assert summary["store"]["label_model_layers"] == ["block5_pool", "block4_pool"]
    # each layer's vectors scaled to unit length, side by side
    from vggtl.audits import labels
    from vggtl.features.store import FeatureStore
    from vggtl.training.fit import pooled_features

    fs = FeatureStore(next((tmp_path / "cache").glob("*.h5")))
    try:
        rows = list(range(len(fs.labels)))
        joined = labels.with_lower_layer(pooled_features(fs, rows, "avgmax"), fs, rows)
    finally:
        fs.close()
    assert joined.shape == (24, 2 * 64 + 2 * 64)  # avg + max of block5 and block4: 64 channels each at width 1/8
    np.testing.assert_allclose(np.linalg.norm(joined[:, :128], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(joined[:, 128:], axis=1), 1.0, rtol=1e-5)

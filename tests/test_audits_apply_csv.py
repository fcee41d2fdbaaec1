"""audit --apply on data listed by data.csv: only the marked rows' lines change, the undo log restores the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import COLORS, make_image, write_config
from vggtl import audit
from vggtl.data import IMAGE_EXTENSIONS, scan

# Quoted cells, a split column and Windows line endings: what an annotation tool may write.
LISTING = ('path,label,split\r\n"imgs/red0.png",red,train\r\nimgs/red1.png,red,\r\nimgs/red2.png,"red",test\r\n'
           + "".join(f"imgs/{name}{i}.png,{name},\r\n" for name in ("red", "green") for i in range(3, 8))
           + 'imgs/green0.png,green,\r\nimgs/green1.png,green,val\r\nimgs/green2.png,green,\r\nimgs/red1.png\r\n\r\n')


@pytest.fixture
def listed(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """``(config, data.csv, data root)`` of 16 images listed by a CSV."""
    root = tmp_path / "data"
    for name in ("red", "green"):
        for i in range(8):
            make_image(root / "imgs" / f"{name}{i}.png", COLORS[name], seed=10 * len(name) + i)
    listing = root / "labels.csv"
    listing.write_bytes(LISTING.encode())
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, data={"root": str(root), "csv": str(listing), "image_size": 32})
    monkeypatch.chdir(tmp_path)
    return cfg, listing, root


def test_relabel_and_exclude_edit_only_their_lines_and_the_undo_log_restores_the_bytes(listed, tmp_path, capsys):
    cfg, listing, root = listed
    images_before = {p: p.read_bytes() for p in (root / "imgs").iterdir()}
    actions = tmp_path / "edited.csv"
    actions.write_text("path,action,label\nimgs/red1.png,relabel,green\nimgs/green1.png,exclude,\nimgs/red2.png,keep,\n")
    assert audit.main([str(cfg), "--apply", str(actions)]) == 0
    out = capsys.readouterr().out
    lines_before, lines_after = LISTING.encode().split(b"\r\n"), listing.read_bytes().split(b"\r\n")
    assert lines_after == [line for line in lines_before if line != b"imgs/green1.png,green,val"][:2] + [b"imgs/red1.png,green,"] \
        + [line for line in lines_before if line != b"imgs/green1.png,green,val"][3:]
    assert {p: p.read_bytes() for p in (root / "imgs").iterdir()} == images_before  # no image moved or rewritten
    listed_now = scan(root, IMAGE_EXTENSIONS, workers=1, csv=listing)
    by_path = {f.relpath: listed_now.class_names[f.label] for f in listed_now.files}
    assert by_path["imgs/red1.png"] == "green" and "imgs/green1.png" not in by_path and len(by_path) == 15
    assert "changed 2 image(s); undo:" in out
    undo = next((tmp_path / "experiments" / "tiny" / "audit" / "undo").glob("undo-*.csv"))
    assert audit.main([str(cfg), "--apply", str(undo)]) == 0
    assert listing.read_bytes() == LISTING.encode()


@pytest.mark.parametrize("content, message", [
    ("path,action,label\nimgs/red0.png,relabel,purple\n", "label 'purple' is not a class; classes: green, red"),
    ("path,action,label\nimgs/nope.png,exclude,\n", "'imgs/nope.png' is not an image"),
    ("path,action,label\nimgs/red0.png,restore,\n", "restore needs the csv_line and csv_text columns of an undo log"),
])
def test_a_bad_row_changes_nothing(listed, tmp_path, capsys, content, message):
    cfg, listing, _ = listed
    bad = tmp_path / "bad.csv"
    bad.write_text("path,action,label\nimgs/red1.png,relabel,green\n" + content.split("\n", 1)[1])
    assert audit.main([str(cfg), "--apply", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert listing.read_bytes() == LISTING.encode()
    assert not (tmp_path / "experiments").exists()  # no undo log, not even its folder

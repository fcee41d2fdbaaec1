"""A CSV file list (data.csv) as a dataset: columns path,label[,split]."""

from __future__ import annotations

import pytest

from conftest import COLORS, make_image
from vggtl import data
from vggtl.errors import DataError


@pytest.fixture
def root(tmp_path):
    for name in ("red", "green"):
        for i in range(6):
            make_image(tmp_path / "imgs" / f"{name}{i}.png", COLORS[name], seed=10 * len(name) + i)
    return tmp_path


def write(path, text):
    path.write_text(text)
    return path


def rows(names=("red", "green"), n=6, split=lambda name, i: ""):
    return "".join(f"imgs/{name}{i}.png,{name},{split(name, i)}\n" for name in names for i in range(n))


def scan(root, csv, val=0.2, test=0.2):
    return data.scan(root, data.IMAGE_EXTENSIONS, workers=2, csv=csv).with_split(1, val, test)


def test_labels_and_rule_split(root):
    ds = scan(root, write(root / "l.csv", "path,label,split\n" + rows()))
    assert ds.class_names == ["green", "red"] and ds.layout == "csv" and len(ds.files) == 12
    counts = ds.counts()
    assert all(counts[s] == {"green": n, "red": n} for s, n in (("train", 8 // 2), ("val", 1), ("test", 1)))
    assert {f.relpath for f in ds.files} == {f"imgs/{n}{i}.png" for n in ("red", "green") for i in range(6)}


def test_split_column_fixes_rows_and_the_rule_carves_the_rest(root):
    text = "path,label,split\n" + rows(split=lambda name, i: "test" if i == 0 else "")
    ds = scan(root, write(root / "l.csv", text), val=0.2, test=0.2)
    by_path = {f.relpath: f.split for f in ds.files}
    assert by_path["imgs/red0.png"] == by_path["imgs/green0.png"] == "test"
    assert sum(s == "test" for s in by_path.values()) == 2  # test given by the CSV: not carved
    assert sum(s == "val" for s in by_path.values()) == 2  # val carved by the rule


def test_bad_rows_are_skipped_with_their_row_and_reason(root):
    text = "path,label\n" + rows() + "imgs/missing.png,red\nimgs/red1.png,\n,green\nimgs/red2.png,red\n"
    ds = scan(root, write(root / "l.csv", text))
    assert len(ds.files) == 12
    notes = "\n".join(ds.warnings)
    assert "row 14: skipped, 'imgs/missing.png' does not exist under" in notes
    assert "row 15: skipped, empty label" in notes
    assert "row 16: skipped, empty path" in notes
    assert "row 17: skipped, 'imgs/red2.png' repeats row 4" in notes


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("file,class\nimgs/red0.png,red\n", r"the header must name the columns path,label\[,split\]; missing path, label"),
        ("path,label,split\nimgs/red0.png,red,holdout\n", r"row 2: split 'holdout' is not one of train, val, validation, test"),
        ("path,label\nimgs/red0.png,red\nimgs/red0.png,green\n", r"rows 2 and 3: 'imgs/red0.png' is listed twice with different labels"),
        ("path,label\nimgs/red0.png,red\nimgs/red1.png,red\n", r"found 1 usable label\(s\) \(red\); need at least 2"),
    ],
)
def test_ambiguous_lists_are_refused(root, text, pattern):
    with pytest.raises(DataError, match=pattern):
        scan(root, write(root / "l.csv", text))


def test_not_a_text_file(root):
    (root / "l.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        scan(root, root / "l.csv")


def test_extract_and_train_from_a_csv(tmp_path):
    import json

    from conftest import make_dataset, run_pipeline, write_config

    make_dataset(tmp_path / "pool", per_class=12)
    lines = [f"pool/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((tmp_path / "pool").glob("*/*.png"))]
    write(tmp_path / "list.csv", "path,label\n" + "\n".join(lines) + "\npool/red/nothere.png,red\n")
    cfg = write_config(tmp_path / "c.yaml", tmp_path, tmp_path, data={"csv": str(tmp_path / "list.csv")})
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    metrics = json.loads((tmp_path / "experiments" / "tiny" / "v1" / "metrics.json").read_text())
    assert sum(metrics["split"]["sizes"].values()) == 36
    report = (tmp_path / "experiments" / "tiny" / "v1" / "report.md").read_text()
    assert "'pool/red/nothere.png' does not exist" in report and "(csv layout)" in report

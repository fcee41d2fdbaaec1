"""Model summaries of configs (no weights needed) and artifacts, and the diagram option."""

from __future__ import annotations

import re

import pytest
import yaml

from tiny_artifact import make_artifact
from vggtl import summary
from vggtl.inspect import layer_table

VGG16_CONV_PARAMS = 14_714_688
RGB_TO_BGR = 9  # the frozen 1x1 permutation kernel of the built-in preprocessing


def write_cfg(path, root, **head):
    cfg = {
        "name": "s",
        "data": {"root": str(root), "image_size": 32},
        "backbone": {"weights": "imagenet"},  # never loaded by summary
        "head": {"units": [16], **head},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(capsys, *argv):
    code = summary.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def totals(out: str) -> tuple[int, int, int]:
    match = re.search(r"total params: ([\d,]+)   trainable: ([\d,]+)   non-trainable: ([\d,]+)", out)
    return tuple(int(g.replace(",", "")) for g in match.groups())


def test_config_summary_counts_class_folders(tmp_path, capsys):
    for name in ("cats", "dogs", "owls"):
        (tmp_path / "data" / name).mkdir(parents=True)
    code, out, err = run(capsys, write_cfg(tmp_path / "c.yaml", tmp_path / "data"))
    assert code == 0, err
    assert "3 classes (class folders in" in out and "random init, shapes only" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert "block5_conv3" in rows and "(?, 2, 2, 512)" in rows["block5_conv3"]
    assert out.count("\n    block1_conv1 ") == 1  # nested two levels deep: indented
    assert rows["predictions"].split()[2:4] == ["(?,", "3)"]
    # head: Dense(512->16) + Dense(16->3), and the probe Dense(512->3) it is averaged with; backbone frozen
    head_params = 512 * 16 + 16 + 16 * 3 + 3 + 512 * 3 + 3
    frozen = VGG16_CONV_PARAMS + RGB_TO_BGR
    assert totals(out) == (frozen + head_params, head_params, frozen)
    assert "probe" in rows and "average" in rows
    assert rows["vgg16"].rstrip().endswith("no") and rows["head"].rstrip().endswith("yes")


def test_config_summary_without_data_root_and_presplit(tmp_path, capsys):
    code, out, err = run(capsys, write_cfg(tmp_path / "c.yaml", tmp_path / "missing", pooling="flatten"))
    assert code == 0, err
    assert "2 classes assumed (data.root" in out and "does not exist" in out
    assert totals(out)[1] == 512 * 16 + 16 + 16 * 2 + 2 + 512 * 2 + 2  # flatten of 1x1x512 at 32 px, + probe
    for split in ("train", "val"):
        for name in ("a", "b", "c", "d"):
            (tmp_path / "pre" / split / name).mkdir(parents=True)
    code, out, _ = run(capsys, write_cfg(tmp_path / "p.yaml", tmp_path / "pre"))
    assert "4 classes (class folders in" in out


def test_artifact_summary(tmp_path, capsys):
    art = make_artifact(tmp_path, width=1.0)  # the real VGG16's parameter count
    code, out, err = run(capsys, art.parent)  # the run directory means its latest version
    assert code == 0, err
    assert out.startswith("model vggtl_tiny: artifact ") and "(3 classes: blue, green, red)" in out
    assert "preprocess_input" in out and "preprocess_rgb_to_bgr" in out
    head_params = 512 * 8 + 8 + 8 * 3 + 3
    frozen = VGG16_CONV_PARAMS + RGB_TO_BGR
    assert totals(out) == (frozen + head_params, head_params, frozen)
    (art / "labels.json").write_text('["x"]')
    code, _, err = run(capsys, art)
    assert code == 2 and "checksum mismatch for labels.json" in err


def test_diagram_hint_when_graphviz_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(layer_table, "diagram_available", lambda: False)
    cfg = write_cfg(tmp_path / "c.yaml", tmp_path / "none")
    code, out, err = run(capsys, cfg, "--diagram", tmp_path / "m.png")
    assert code == 1
    assert "total params:" in out  # the table is still printed
    assert "pip install pydot" in err and "apt-get install graphviz" in err and "Traceback" not in err
    assert not (tmp_path / "m.png").exists()


def test_diagram_is_drawn_when_available(tmp_path, capsys, monkeypatch):
    import keras

    calls = []
    monkeypatch.setattr(layer_table, "diagram_available", lambda: True)
    monkeypatch.setattr(keras.utils, "plot_model", lambda model, **kw: calls.append((model.name, kw)))
    code, out, err = run(capsys, write_cfg(tmp_path / "c.yaml", tmp_path / "none"), "--diagram", tmp_path / "m.svg")
    assert code == 0, err
    assert calls == [("vggtl_s", {"to_file": str(tmp_path / "m.svg"), "show_shapes": True, "show_layer_names": True, "expand_nested": True})]
    assert f"diagram: {tmp_path / 'm.svg'}" in out


@pytest.mark.parametrize(
    "target,extra,message",
    [
        ("missing.yaml", [], "does not exist; pass an artifact directory or a config file"),
        ("notes.txt", [], "is neither an artifact directory nor a config file"),
        ("c.yaml", ["--diagram", "m.jpg"], "the file name must end in .png, .svg, .pdf"),
        ("c.yaml", ["--diagram", "nodir/m.png"], "does not exist; create it first"),
        ("bad.yaml", [], "unknown key"),
    ],
)
def test_usage_errors(tmp_path, capsys, monkeypatch, target, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    write_cfg(tmp_path / "c.yaml", tmp_path / "none")
    (tmp_path / "bad.yaml").write_text("name: x\ndata: {root: ., imgae_size: 3}\n")
    code, out, err = run(capsys, target, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err

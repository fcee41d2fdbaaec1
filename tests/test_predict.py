"""predict's --gradcam/--class and --tiles/--overlap on a small artifact.

(Plain predictions from a trained artifact are covered end to end in test_train.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from tiny_artifact import LABELS, make_artifact
from vggtl import predict


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("predict"), favourite="red")


def run(capsys, *argv):
    code = predict.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_gradcam_writes_overlay_and_heatmap(art, tmp_path, capsys):
    image = make_image(tmp_path / "in" / "wide.png", (40, 200, 40))
    Image.open(image).resize((48, 40)).save(image)  # non-square original
    out_dir = tmp_path / "cams"
    code, out, err = run(capsys, art, image, "--gradcam", out_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{image}\tred ")
    assert lines[1] == f"  grad-cam of 'red' at block5_conv3: {out_dir / 'wide_gradcam.jpg'}"
    with Image.open(out_dir / "wide_gradcam.jpg") as overlay:
        assert overlay.size == (48, 40)  # drawn on the original, not the 32x32 model input
    heat = np.load(out_dir / "wide_gradcam.npy")
    assert heat.shape == (2, 2) and heat.min() >= 0 and heat.max() <= 1  # block5_conv3 at 32 px


@pytest.mark.parametrize("name, layer, side", [("resnet50", "conv5_block3_out", 1), ("mobilenet_v2", "out_relu", 2)])
def test_gradcam_on_other_backbones_uses_their_layer(tmp_path, capsys, name, layer, side):
    """ResNet/MobileNet bases are not chains: explained through their own layer."""
    other = make_artifact(tmp_path / "art", favourite="blue", image_size=33 if name == "mobilenet_v2" else 32, backbone_name=name)
    image = make_image(tmp_path / "b.png", (40, 40, 200))
    code, out, err = run(capsys, other, image, "--gradcam", tmp_path / "cams", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["top"][0]["label"] == "blue"
    assert record["gradcam"]["layer"] == layer
    heat = np.load(tmp_path / "cams" / "b_gradcam.npy")
    assert heat.shape == (side, side) and heat.min() >= 0 and heat.max() <= 1


def test_gradcam_class_choice_and_json(art, tmp_path, capsys):
    image = make_image(tmp_path / "a.png", (40, 40, 200))
    code, out, err = run(capsys, art, image, "--gradcam", tmp_path / "cams", "--class", "green", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["top"][0]["label"] == "red"
    assert record["gradcam"]["class"] == "green" and record["gradcam"]["layer"] == "block5_conv3"
    assert record["gradcam"]["npy"] == str(tmp_path / "cams" / "a_gradcam.npy")


def test_gradcam_same_stem_twice_does_not_overwrite(art, tmp_path, capsys):
    first = make_image(tmp_path / "x" / "cat.png", (200, 40, 40))
    second = make_image(tmp_path / "y" / "cat.png", (40, 200, 40))
    code, out, err = run(capsys, art, first, second, "--gradcam", tmp_path / "cams")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == [
        "cat-2_gradcam.jpg", "cat-2_gradcam.npy", "cat_gradcam.jpg", "cat_gradcam.npy",
    ]


def test_tiles_table_and_json(art, tmp_path, capsys):
    image = make_image(tmp_path / "big.png", (40, 200, 40), size=64)
    code, out, err = run(capsys, art, image, "--tiles", "2x2", "--overlap", "0.25")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{image}  (64x64, 2x2 tiles, overlap 0.25)"
    assert len(lines) == 7 and all(" red " in line for line in lines[2:6])
    assert lines[-1].startswith("  aggregate (max over tiles): red ")
    code, out, err = run(capsys, art, image, "--tiles", "2x2", "--overlap", "0.25", "--json")
    record = json.loads(out)
    assert [t["index"] for t in record["tiles"]] == [0, 1, 2, 3]
    assert record["tiles"][0]["box"][:2] == [0, 0] and record["tiles"][3]["box"][2:] == [64, 64]
    # aggregate = per-class max over tiles (top-k 3 = all classes here)
    for entry in record["aggregate"]:
        per_tile = [next(t["probability"] for t in tile["top"] if t["label"] == entry["label"]) for tile in record["tiles"]]
        assert entry["probability"] == pytest.approx(max(per_tile))
    assert {e["label"] for e in record["aggregate"]} == set(LABELS)


def test_single_tile_equals_plain_prediction(art, tmp_path, capsys):
    image = make_image(tmp_path / "p.png", (120, 120, 30), size=50)
    _, plain, _ = run(capsys, art, image, "--json")
    _, tiled, _ = run(capsys, art, image, "--json", "--tiles", "1x1")
    plain, tiled = json.loads(plain), json.loads(tiled)
    assert tiled["tiles"][0]["box"] == [0, 0, 50, 50]
    assert tiled["tiles"][0]["top"] == plain["top"]
    assert tiled["aggregate"] == plain["top"]


def test_tiles_undecodable_file_exit_1(art, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = make_image(tmp_path / "good.png", (200, 40, 40))
    code, out, err = run(capsys, art, good, bad, "--tiles", "1x2")
    assert code == 1
    assert f"{bad}: skipped: not an image file" in err
    assert out.startswith(f"{good}  (32x32, 1x2 tiles")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--gradcam", "out", "--class", "purple"], "--class 'purple' is not a class of this artifact; choose one of: blue, green, red"),
        (["--class", "red"], "use it together with --gradcam"),
        (["--tiles", "2by2"], "--tiles '2by2': expected ROWSxCOLS such as 2x2"),
        (["--tiles", "2x0"], "between 1 and 16"),
        (["--overlap", "0.1"], "--overlap only applies to tiled predictions"),
        (["--tiles", "2x2", "--overlap", "x"], "expected a fraction"),
        (["--tiles", "2x2", "--gradcam", "out"], "--gradcam and --tiles cannot be combined"),
    ],
)
def test_usage_errors_exit_2(art, tmp_path, capsys, extra, message):
    image = make_image(tmp_path / "a.png", (200, 40, 40))
    code, out, err = run(capsys, art, image, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert out == ""

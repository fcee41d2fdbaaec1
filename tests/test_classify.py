"""ImageNet classification: shipped class index, weight resolution, the command
(with a small stand-in for the ~550 MB network) and the real offline failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from vggtl import classify
from vggtl.inspect import imagenet
from vggtl.errors import VggtlError, WeightsError

COFFEE_MUG = 504
SIZE = 32


# --------------------------------------------------------------------------- class index


def test_class_index_is_keras_own_file():
    entries = imagenet.class_index()
    assert len(entries) == 1000
    assert len({wnid for wnid, _ in entries}) == 1000
    assert entries[0] == ("n01440764", "tench")
    assert entries[COFFEE_MUG] == ("n03063599", "coffee_mug")
    assert entries[999] == ("n15075141", "toilet_tissue")
    # byte-identical to the file keras.applications.imagenet_utils downloads and pins
    assert imagenet.class_index_md5() == imagenet.CLASS_INDEX_MD5
    import keras.src.applications.imagenet_utils as imagenet_utils

    assert imagenet.CLASS_INDEX_MD5 in Path(imagenet_utils.__file__).read_text()


def test_class_index_and_page_templates_ship_as_package_data():
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vggtl"]
    shipped = {p.relative_to(repo / "vggtl").as_posix() for pattern in patterns for p in (repo / "vggtl").glob(pattern)}
    assert "imagenet_class_index.json" in shipped
    assert {"reports/templates/base.html.j2", "reports/templates/report.html.j2"} <= shipped


def test_resolve_class():
    assert imagenet.resolve_class("coffee_mug") == COFFEE_MUG
    assert imagenet.resolve_class("Coffee Mug") == COFFEE_MUG
    assert imagenet.resolve_class("n03063599") == COFFEE_MUG
    with pytest.raises(VggtlError, match=r"names 2 ImageNet classes; pass the wnid .*n02012849 \(index 134\), n03126707 \(index 517\)"):
        imagenet.resolve_class("crane")
    with pytest.raises(VggtlError, match="neither an ImageNet label nor a wnid.*Did you mean: coffee_mug"):
        imagenet.resolve_class("cofee mug")


def test_decode_predictions():
    probs = np.zeros(1000)
    probs[[COFFEE_MUG, 0, 999]] = [0.7, 0.2, 0.1]
    assert imagenet.decode_predictions(probs, 2) == [("n03063599", "coffee_mug", 0.7), ("n01440764", "tench", 0.2)]
    with pytest.raises(ValueError, match=r"probs must have shape \(1000,\)"):
        imagenet.decode_predictions(np.zeros(8), 2)


# --------------------------------------------------------------------------- weights


def test_weights_resolution_order(tmp_path):
    explicit = tmp_path / "mine.h5"
    explicit.write_bytes(b"x")
    assert imagenet.classifier_weights("vgg16", explicit) == explicit
    with pytest.raises(WeightsError, match="--weights '.*missing.h5' does not exist"):
        imagenet.classifier_weights("vgg16", tmp_path / "missing.h5")
    # conftest points KERAS_HOME at an empty temporary directory
    cached = Path(os.environ["KERAS_HOME"]) / "models" / "vgg19_weights_tf_dim_ordering_tf_kernels.h5"
    with pytest.raises(WeightsError, match="none found locally") as info:
        imagenet.classifier_weights("vgg19", download=False)
    message = str(info.value)
    assert "--weights /path/to/vgg19_weights_tf_dim_ordering_tf_kernels.h5" in message
    assert str(cached) in message and "internet access" in message
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert imagenet.classifier_weights("vgg19") == cached
    with pytest.raises(VggtlError, match="--model 'vgg11': choose one of vgg16, vgg19"):
        imagenet.classifier_weights("vgg11")


def test_failed_download_becomes_weights_error(monkeypatch):
    import keras

    def fail(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", fail)
    with pytest.raises(WeightsError, match="Keras download failed: URL fetch failure.*Remedies"):
        imagenet.classifier_weights("vgg16")


def test_weights_of_another_model_are_refused(tmp_path, capsys):
    import h5py

    bogus = tmp_path / "notop.h5"
    with h5py.File(bogus, "w") as fh:
        fh["x"] = np.zeros(3)
    image = make_image(tmp_path / "a.png", (200, 40, 40))
    assert classify.main([str(image), "--weights", str(bogus)]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded into VGG16(include_top=True)" in err and "not the notop file" in err
    assert "Traceback" not in err


def test_offline_without_weights_fails_cleanly(tmp_path, monkeypatch, capsys):
    """The real path: nothing cached, Keras' download attempted and refused -> exit 2, remedies."""
    import urllib.request

    image = make_image(tmp_path / "photo.png", (200, 40, 40))
    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    # Never fetch ~550 MB from a test, even on a machine that is online: Keras
    # downloads with urllib's urlretrieve, whose opener here goes through a
    # proxy on a closed local port, which refuses the connection at once.
    proxy = "http://127.0.0.1:9"
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy})))
    assert classify.main([str(image)]) == 2
    out, err = capsys.readouterr()
    assert "error: no ImageNet VGG16 classifier weights (include_top) available" in err
    assert "Keras download failed" in err and "Connection refused" in err
    assert "--weights /path/to/vgg16_weights_tf_dim_ordering_tf_kernels.h5" in err
    assert str(home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5") in err
    assert "Traceback" not in err
    assert out == ""
    assert not list(home.rglob("*.h5"))  # nothing half-downloaded left behind


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def stand_in():
    """1000 outputs like the real network, tiny, and sure of coffee_mug."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block5_conv3")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    predictions = keras.layers.Dense(1000, activation="softmax", name="predictions")
    model = keras.Model(inputs, predictions(x), name="stand_in")
    kernel, bias = predictions.get_weights()
    bias[COFFEE_MUG] = 8.0
    bias[0] = 4.0
    predictions.set_weights([kernel * 0.01, bias])
    return model


@pytest.fixture
def run(stand_in, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "full.h5"
    weights.write_bytes(b"stand-in")
    built = []

    def build_model(model, path):
        built.append((model, Path(path)))
        return stand_in

    monkeypatch.setattr(imagenet, "build_classifier", build_model)

    def run_(*argv):
        code = classify.main([*map(str, argv), "--weights", str(weights)])
        out, err = capsys.readouterr()
        return code, out, err

    run_.built = built
    run_.weights = weights
    return run_


def test_classify_images(run, tmp_path):
    red = make_image(tmp_path / "imgs" / "red.png", (200, 40, 40))
    make_image(tmp_path / "imgs" / "sub" / "blue.jpg", (40, 40, 200))
    code, out, err = run(tmp_path / "imgs", "--model", "vgg19", "--top-k", "2")
    assert code == 0, err
    assert run.built == [("vgg19", run.weights)]
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{red}\t")
    assert "coffee_mug (n03063599) 0.7" in lines[0] and "tench (n01440764)" in lines[0]
    code, out, _ = run(red, "--json")
    record = json.loads(out)
    assert record["path"] == str(red) and len(record["top"]) == 5
    assert record["top"][0]["wnid"] == "n03063599" and record["top"][0]["label"] == "coffee_mug"
    probabilities = [t["probability"] for t in record["top"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_classify_gradcam_and_tiles(run, tmp_path):
    photo = make_image(tmp_path / "photo.png", (200, 40, 40), size=48)
    code, out, err = run(photo, "--gradcam", tmp_path / "cams", "--class", "tench", "--json")
    assert code == 0, err
    cam = json.loads(out)["gradcam"]
    assert cam["wnid"] == "n01440764" and cam["layer"] == "block5_conv3"
    assert Path(cam["jpg"]) == tmp_path / "cams" / "photo_gradcam.jpg" and Path(cam["jpg"]).is_file()
    assert np.load(cam["npy"]).shape == (SIZE, SIZE)
    code, out, err = run(photo, "--tiles", "2x2", "--overlap", "0.5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{photo}  (48x48, 2x2 tiles, overlap 0.5)"
    assert len(lines) == 2 + 4 + 1 and "coffee_mug" in lines[2]
    code, out, _ = run(photo, "--tiles", "1x2", "--json", "--top-k", "1")
    record = json.loads(out)
    assert [t["box"] for t in record["tiles"]] == [[0, 0, 24, 48], [24, 0, 48, 48]]
    assert record["aggregate"][0]["wnid"] == "n03063599"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--class", "crane", "--gradcam", "out"], "names 2 ImageNet classes"),
        (["--class", "tench"], "use it together with --gradcam"),
        (["--tiles", "2by2"], "expected ROWSxCOLS such as 2x2"),
        (["--tiles", "0x2"], "between 1 and 16"),
        (["--overlap", "0.2"], "add --tiles RxC"),
        (["--tiles", "2x2", "--overlap", "0.95"], "must be >= 0 and < 0.9"),
        (["--tiles", "2x2", "--gradcam", "out"], "cannot be combined"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--top-k", "1001"], "--top-k must be <= 1000"),
    ],
)
def test_usage_errors_exit_2_before_loading_anything(run, tmp_path, extra, message):
    image = make_image(tmp_path / "a.png", (200, 40, 40))
    code, out, err = run(image, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert run.built == []


def test_undecodable_input_exit_1(run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    good = make_image(tmp_path / "good.png", (200, 40, 40))
    code, out, err = run(good, bad)
    assert code == 1
    assert f"{bad}: skipped: not an image file" in err
    assert out.startswith(f"{good}\t")

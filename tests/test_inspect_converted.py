"""predict without TensorFlow: model.keras converted once to ONNX Runtime or
OpenVINO, cached by the model's digest, verified, and then run with no
TensorFlow import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_dataset, make_image, needs_extra, run_pipeline, write_config
from tiny_artifact import make_artifact
from vggtl.errors import VggtlError
from vggtl.inspect import converted
from vggtl.training import artifact

RUNTIMES = [pytest.param("onnxruntime", marks=needs_extra("onnx")), pytest.param("openvino", marks=needs_extra("openvino"))]

RUN_PREDICT = """
import sys
from vggtl import predict
code = predict.main(sys.argv[1:])
print("tensorflow imported:", "tensorflow" in sys.modules, "keras imported:", "keras" in sys.modules)
sys.exit(code)
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_converted_once_then_predicts_without_tensorflow(tmp_path, monkeypatch, capsys, runtime):
    art_dir = make_artifact(tmp_path, favourite="green")
    images = [make_image(tmp_path / f"img{i}.png", color, seed=i) for i, color in enumerate([(200, 40, 40), (40, 40, 200)])]
    monkeypatch.setenv(converted.ENV, runtime)
    art = artifact.load(art_dir)
    fast = converted.predictor(art, runtime)  # converts, verifies, caches
    folder = converted.cache_folder(art, runtime)
    record = json.loads((folder / "verification.json").read_text())
    assert record["sha256"] == art.checksums["model.keras"] and record["max_abs_dprob"] <= converted.TOLERANCE
    from vggtl.data import decode_image

    x = np.stack([decode_image(p, 32) for p in images])
    np.testing.assert_allclose(fast(x), art.load_model().predict(x, verbose=0), atol=converted.TOLERANCE)
    # a new process: the cached conversion, and no TensorFlow import at all
    env = {**os.environ, converted.ENV: runtime}
    done = subprocess.run([sys.executable, "-c", RUN_PREDICT, str(art_dir), *map(str, images), "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tensorflow imported: False keras imported: False" in done.stdout
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["top"][0]["label"] for line in lines] == ["green", "green"]
    assert f"to {runtime} once" not in done.stderr  # made once, by the first call
    assert "cannot say 'unknown' (it was trained by a vggtl without unknown detection)" in done.stderr  # (a hand-made artifact)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_trained_artifact_converts_with_its_unknown_score(tmp_path, runtime):
    """A trained artifact's model.keras gives probabilities and the unknown
    score: the conversion is verified on both, and gives both."""
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data"), tmp_path)
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    art = artifact.load(tmp_path / "experiments" / "tiny" / "latest")
    assert art.unknown is not None
    probabilities, scores = converted.predictor(art, runtime, log=lambda line: None)(x := converted.probe_images(32))
    expected = art.load_model(with_unknown=True).predict(x, verbose=0)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=converted.TOLERANCE)
    reference = expected["unknown_score"]  # as the conversion check compares them: relative above 1
    assert np.all(np.abs(scores - reference) / np.maximum(1.0, np.abs(reference)) <= converted.SCORE_TOLERANCE)
    record = json.loads((converted.cache_folder(art, runtime) / "verification.json").read_text())
    assert record["max_abs_dprob"] <= converted.TOLERANCE


@needs_extra("onnx")
def test_the_default_is_the_fastest_installed_runtime_and_a_changed_model_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.delenv(converted.ENV)
    assert converted.chosen_runtime() == ("onnxruntime", None)
    first = artifact.load(make_artifact(tmp_path / "a", favourite="red"))
    second = artifact.load(make_artifact(tmp_path / "b", favourite="blue"))
    assert converted.cache_folder(first, "onnxruntime") != converted.cache_folder(second, "onnxruntime")


def test_without_a_runtime_the_note_names_the_extra(monkeypatch):
    import importlib.util

    monkeypatch.delenv(converted.ENV)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    runtime, note = converted.chosen_runtime()
    assert runtime is None and "pip install 'vggtl[onnx]'" in note and "without importing TensorFlow" in note
    monkeypatch.setenv(converted.ENV, "tensorflow")
    assert converted.chosen_runtime() == (None, None)


def test_a_bad_runtime_name_is_refused(monkeypatch):
    monkeypatch.setenv(converted.ENV, "tensorrt")
    with pytest.raises(VggtlError, match="VGGTL_PREDICT_RUNTIME='tensorrt': allowed values are tensorflow, onnxruntime, openvino"):
        converted.chosen_runtime()


def test_probe_images_are_deterministic_and_varied():
    a, b = converted.probe_images(32), converted.probe_images(32)
    assert a.dtype == np.uint8 and a.shape == (converted.PROBES, 32, 32, 3) and np.array_equal(a, b)
    assert len({img.tobytes() for img in a}) == converted.PROBES

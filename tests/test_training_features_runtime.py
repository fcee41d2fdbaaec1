"""An artifact trained on OpenVINO / ONNX Runtime features carries that base:
predict runs it when installed (the probabilities the metrics came from),
falls back to model.keras with one note otherwise; the report gives the test
accuracy both ways."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_dataset, needs_extra, run_pipeline, write_config
from vggtl import predict
from vggtl.errors import ArtifactError
from vggtl.inspect import predictions
from vggtl.training import artifact, features_runtime




def trained(tmp_path, runtime, precision, **sections):
    extract = {"runtime": runtime, "precision": precision, "calibration_images": 4}
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=8), tmp_path, extract=extract, **sections)
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    return artifact.load(tmp_path / "experiments" / "tiny")


def evaluated_test_rows(art) -> dict:
    """path -> the test row of predictions.csv (what the metrics were computed from)."""
    with open(art.path / "predictions.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f) if r["split"] == "test"}


def evaluated_test_probabilities(art) -> dict:
    """path -> the probabilities the metrics were computed from (predictions.csv)."""
    return {path: np.array([float(r[f"p_{label}"]) for label in art.labels]) for path, r in evaluated_test_rows(art).items()}


def predicted(art, root, paths, scores=None, **kwargs):
    """path -> predicted probabilities (and the unknown scores into ``scores``, when given)."""
    results = predict.predict_paths(art, [root / p for p in paths], top_k=len(art.labels), **kwargs)
    out = {}
    for path, result in zip(paths, results):
        by_label = dict(result["top"])
        out[path] = np.array([by_label[label] for label in art.labels])
        if scores is not None:
            scores[path] = result["unknown_score"]
    return out


def assert_predicts_as_evaluated(art, root):
    """Probabilities (fp16 cache: ~1e-3) and unknown scores as in predictions.csv, through the carried base."""
    rows, scores = evaluated_test_rows(art), {}
    got = predicted(art, root, list(rows), scores)
    for path, probs in evaluated_test_probabilities(art).items():
        np.testing.assert_allclose(got[path], probs, atol=5e-3)
        assert scores[path] == pytest.approx(float(rows[path]["unknown_score"]), abs=0.05)


@pytest.mark.parametrize("runtime, precision", [pytest.param("openvino", "int8", marks=needs_extra("openvino")),
                                                pytest.param("onnxruntime", "fp32", marks=needs_extra("onnx"))])
def test_artifact_carries_the_base_and_predict_runs_it(tmp_path, capsys, monkeypatch, runtime, precision):
    art = trained(tmp_path, runtime, precision)
    out = capsys.readouterr().out
    record = art.features_runtime
    assert record["runtime"] == runtime and record["precision"] == precision and record["layer"] == "block5_pool"
    assert (art.path / record["model"]).is_file() and (art.path / "head.keras").is_file()
    assert (record["calibration"] is not None) == (precision == "int8")
    # the report and the console give the test accuracy through TensorFlow fp32 too
    tf32 = art.metrics["tensorflow_fp32"]
    assert tf32["n"] == art.metrics["test"]["n"] and 0 <= tf32["top1_agreement"] <= 1
    assert "test accuracy through TensorFlow fp32 (model.keras)" in out
    assert "base through TensorFlow fp32" in (art.path / "report.md").read_text()
    # unknown detection on the converted base's own channel statistics, inside head.keras
    assert art.metrics["unknown"]["available"] and record["inputs"] == ["block5_pool", "channel_stats"]
    # predict reproduces the evaluated probabilities and unknown scores, through the carried base
    evaluated = evaluated_test_probabilities(art)
    assert_predicts_as_evaluated(art, tmp_path / "data")
    err = capsys.readouterr().err  # the converted base ran: no fallback note, no "cannot say unknown"
    assert not [line for line in err.splitlines() if line.startswith("note:")], err
    # ... and with head.keras converted to the same runtime (both outputs), a new process never imports TensorFlow
    monkeypatch.setenv("VGGTL_PREDICT_RUNTIME", runtime)
    assert_predicts_as_evaluated(art, tmp_path / "data")  # converts head.keras once
    code = ("import sys; from vggtl import predict; predict.main(sys.argv[1:])\n"
            "print('tensorflow imported:', 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(art.path), *(str(tmp_path / "data" / p) for p in evaluated)],
                          capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0 and "tensorflow imported: False False" in done.stdout, done.stderr[-2000:]


@needs_extra("openvino")
def test_without_the_runtime_predict_falls_back_to_model_keras_once(tmp_path, capsys, monkeypatch):
    art = trained(tmp_path, "openvino", "int8")
    evaluated = evaluated_test_probabilities(art)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    capsys.readouterr()
    got = predicted(art, tmp_path / "data", list(evaluated))
    err = capsys.readouterr().err
    assert err.count("note: this model's head was trained on openvino int8 features, but openvino is not installed "
                     "(pip install 'vggtl[openvino]'); the base runs in TensorFlow fp32 (model.keras)") == 1
    model = art.load_model()
    for path in evaluated:
        image = predictions.artifact_config(art).spec.decode.decode(tmp_path / "data" / path)
        np.testing.assert_allclose(got[path], model.predict(image[None], verbose=0)[0], atol=1e-5)


def test_a_tensorflow_artifact_carries_no_base(tmp_path):
    art = trained(tmp_path, "tensorflow", "fp32")
    assert art.features_runtime is None and "tensorflow_fp32" not in art.metrics
    assert not (art.path / "base").exists() and not (art.path / "head.keras").exists()


@needs_extra("openvino")
def test_a_tampered_carried_base_is_refused(tmp_path):
    art = trained(tmp_path, "openvino", "fp32")
    with open(art.path / "base" / "model.bin", "r+b") as f:
        f.seek(64)
        f.write(b"\x7f" * 32)
    with pytest.raises(ArtifactError, match="checksum mismatch for base/model.bin"):
        artifact.load(art.path)


@needs_extra("openvino")
def test_fine_tuned_head_on_runtime_features_predicts_as_evaluated(tmp_path):
    """With fine-tuning, the carried head.keras is the tuned top blocks + head on
    the boundary layer the converted base also outputs."""
    art = trained(tmp_path, "openvino", "fp32", finetune={"blocks": 1, "epochs": 3})
    record = art.features_runtime
    assert record["layers"] == ["block5_pool", "block4_pool", "channel_stats"]
    assert record["layer"] == ("block4_pool" if art.metrics["phase2"]["kept"] else "block5_pool")
    info = json.loads((art.path / "info.json").read_text())
    assert info["features_runtime"] == record
    assert record["inputs"] == [record["layer"], "channel_stats"]
    assert_predicts_as_evaluated(art, tmp_path / "data")


def test_an_artifact_from_before_the_unknown_score_feeds_its_head_one_input():
    old = {"layer": "block5_pool", "layers": ["block5_pool"]}
    assert features_runtime.head_inputs(old) == {"features": "block5_pool"}
    new = {"layer": "block4_pool", "inputs": ["block4_pool", "channel_stats"]}
    assert features_runtime.head_inputs(new) == {"features": "block4_pool", "channel_stats": "channel_stats"}

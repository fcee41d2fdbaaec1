"""extract.runtime: the frozen base through OpenVINO or ONNX Runtime, converted
once, cached by digest, features matching TensorFlow's."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset, needs_extra, write_config
from vggtl import config, extract
from vggtl import plan
from vggtl.features.store import FeatureStore


RUNTIMES = [pytest.param("openvino", marks=needs_extra("openvino")), pytest.param("onnxruntime", marks=needs_extra("onnx"))]


def run_extract(cfg_path, monkeypatch, tmp_path, *sets):
    monkeypatch.chdir(tmp_path)
    argv = [str(cfg_path), "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert extract.main(argv) == 0


def store_of(cfg_path, *sets):
    cfg = config.load(cfg_path, list(sets))
    return FeatureStore(plan.resolve(cfg).store.path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_features_match_tensorflow_and_conversion_happens_once(tmp_path, monkeypatch, capsys, runtime):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path)
    run_extract(cfg, monkeypatch, tmp_path)
    run_extract(cfg, monkeypatch, tmp_path, f"extract.runtime={runtime}")
    out = capsys.readouterr().out
    assert f"converted the frozen base to {runtime} fp32 once" in out
    with store_of(cfg) as tf_store, store_of(cfg, f"extract.runtime={runtime}") as rt_store:
        assert tf_store.path != rt_store.path and rt_store.settings["runtime"] == f"{runtime}-fp32"
        assert "runtime" not in tf_store.settings
        assert list(tf_store.paths) == list(rt_store.paths)
        a, b = tf_store.features(np.arange(len(tf_store.paths))), rt_store.features(np.arange(len(rt_store.paths)))
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max()))
    # a new image: computed with the cached converted model, no second conversion
    make_dataset(tmp_path / "data", per_class=1, start=50)
    run_extract(cfg, monkeypatch, tmp_path, f"extract.runtime={runtime}")
    assert "converted the frozen base" not in capsys.readouterr().out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_mirror_average_base_converts_with_its_mirror_branch(tmp_path, monkeypatch, capsys, runtime):
    """backbone.mirror_average runs on a converted runtime too: the converted model
    holds the mirror branch (a cache key of its own, so the plain base's cached
    model is not reused) and its features match TensorFlow's."""
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=4), tmp_path)
    run_extract(cfg, monkeypatch, tmp_path, f"extract.runtime={runtime}")
    mirror = ("backbone.mirror_average=true", f"extract.runtime={runtime}")
    run_extract(cfg, monkeypatch, tmp_path, "backbone.mirror_average=true")
    capsys.readouterr()
    run_extract(cfg, monkeypatch, tmp_path, *mirror)
    assert f"converted the frozen base to {runtime} fp32 once" in capsys.readouterr().out
    with store_of(cfg, "backbone.mirror_average=true") as tf_store, store_of(cfg, *mirror) as rt_store, \
            store_of(cfg, f"extract.runtime={runtime}") as plain:
        rows = np.arange(len(tf_store.paths))
        a, b = tf_store.features(rows), rt_store.features(rows)
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max()))
        assert np.abs(a - plain.features(rows)).max() > 1e-2  # the mirror branch changed the features


@needs_extra("openvino")
def test_a_corrupted_converted_model_is_rebuilt(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path)
    run_extract(cfg, monkeypatch, tmp_path, "extract.runtime=openvino")
    (cached,) = Path(os.environ["VGGTL_CACHE_DIR"]).glob("runtimes/openvino-*/model.bin")
    with open(cached, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 64)
    make_dataset(tmp_path / "data", per_class=1, start=50)  # something to compute
    capsys.readouterr()
    run_extract(cfg, monkeypatch, tmp_path, "extract.runtime=openvino")
    out = capsys.readouterr().out
    assert "model.bin does not match its recorded sha256 (corrupted); converting again" in out
    assert "converted the frozen base to openvino fp32 once" in out


def test_missing_runtime_names_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path)
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--no-progress", "--set", "extract.runtime=openvino"]) == 2
    err = capsys.readouterr().err
    assert "extract.runtime: openvino needs the optional package 'openvino': pip install 'vggtl[openvino]'" in err
    assert not list((tmp_path / "cache").glob("*.h5"))


def test_unknown_runtime_is_refused(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path)
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--set", "extract.runtime=tensorrt"]) == 2
    assert "key 'extract.runtime': got 'tensorrt'; allowed values: tensorflow, openvino, onnxruntime" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_features_are_close_and_named_by_their_calibration(tmp_path, monkeypatch, capsys, runtime):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path,
                       extract={"calibration_images": 5})
    run_extract(cfg, monkeypatch, tmp_path)
    run_extract(cfg, monkeypatch, tmp_path, f"extract.runtime={runtime}", "extract.precision=int8")
    assert "int8 once (calibrated on 5 training images)" in capsys.readouterr().out
    sets = (f"extract.runtime={runtime}", "extract.precision=int8")
    with store_of(cfg) as fp32, store_of(cfg, *sets) as int8:
        assert int8.settings["runtime"] == f"{runtime}-int8" and len(int8.settings["calibration"]) == 16
        a, b = fp32.features(np.arange(len(fp32.paths))), int8.features(np.arange(len(int8.paths)))
        pa, pb = a.mean(axis=(1, 2)), b.mean(axis=(1, 2))
        cos = np.sum(pa * pb, axis=1) / np.linalg.norm(pa, axis=1) / np.linalg.norm(pb, axis=1)
        assert cos.min() > 0.95 and not np.array_equal(a, b)
    # another split seed: other training images, another calibration, another store
    with store_of(cfg, *sets) as s1:
        cfg2 = config.load(cfg, list(sets) + ["data.split.seed=99"])
        assert plan.resolve(cfg2).store.path != s1.path


def test_int8_on_tensorflow_is_refused(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path)
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--set", "extract.precision=int8"]) == 2
    assert "key 'extract.precision': int8 needs extract.runtime openvino or onnxruntime" in capsys.readouterr().err


@needs_extra("openvino")
def test_a_warm_int8_rerun_imports_no_runtime(tmp_path, monkeypatch):
    import subprocess
    import sys

    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=6), tmp_path,
                       extract={"runtime": "openvino", "precision": "int8", "calibration_images": 4})
    run_extract(cfg, monkeypatch, tmp_path)
    code = ("import sys; from vggtl import extract; code = extract.main([sys.argv[1], '--no-progress']); "
            "print(code, 'openvino' in sys.modules, 'nncf' in sys.modules, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "VGGTL_CACHE_DIR": os.environ["VGGTL_CACHE_DIR"]})
    assert done.stdout.split()[-4:] == ["0", "False", "False", "False"], done.stdout + done.stderr[-1000:]

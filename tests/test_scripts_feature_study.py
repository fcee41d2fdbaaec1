"""scripts/feature_study.py on a tiny generated dataset (random weights, 32x32)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from conftest import make_dataset, write_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "feature_study.py"


def load_script():
    spec = importlib.util.spec_from_file_location("feature_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_representation_combines_layers_pooling_power_and_flip():
    study = load_script()
    views = {
        ("block4_pool", False): np.array([[4.0, 9.0, 16.0, 25.0]]),  # [avg avg | max max]
        ("block4_pool", True): np.array([[0.0, 9.0, 16.0, 25.0]]),
        ("block5_pool", False): np.array([[1.0, 1.0]]),
        ("block5_pool", True): np.array([[1.0, 1.0]]),
    }
    assert study.representation(views, ["block4_pool"], "avg", "none", "none").tolist() == [[4.0, 9.0]]
    assert study.representation(views, ["block4_pool"], "avgmax", "sqrt", "none").tolist() == [[2.0, 3.0, 4.0, 5.0]]
    assert study.representation(views, ["block4_pool"], "avg", "none", "avg").tolist() == [[2.0, 9.0]]
    assert study.representation(views, study.LAYERS, "avg", "none", "none").tolist() == [[4.0, 9.0, 1.0]]


def test_prints_every_combination_for_every_policy(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", per_class=10)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    assert load_script().main([str(cfg), "--policies", "stretch", "pad", "--seeds", "0", "1", "--repeats", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("stretch ", "pad "))]
    assert len(rows) == 2 * 16
    accuracies = np.array([[float(r[5]), float(r[6])] for r in rows])
    # three colours, random weights: far above chance (1/3), so the probe and splits really ran
    assert np.all((0.0 <= accuracies) & (accuracies <= 1.0)) and accuracies.mean() > 0.6

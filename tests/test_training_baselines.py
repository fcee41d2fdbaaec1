"""The from-scratch baseline CNN and its place in train's metrics and report."""

from __future__ import annotations

import json

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl.training import baselines


def test_tutorial_architecture():
    model = baselines.build_scratch_cnn(5, 64)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[kinds.index("Conv2D") :] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense",
    ]
    assert {"RandomFlip", "RandomRotation", "RandomZoom"} <= set(kinds)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 5)
    assert "RandomFlip" not in [type(layer).__name__ for layer in baselines.build_scratch_cnn(2, 32, augment=False).layers]


@pytest.fixture(scope="module")
def run_with_baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scratch")
    root = make_dataset(tmp / "data", per_class=16)
    cfg = write_config(tmp / "s.yaml", root, tmp, baseline={"scratch": True, "image_size": 32, "epochs": 12, "patience": 4})
    return run_pipeline(tmp, cfg, [[str(cfg)], [str(cfg)]])


def test_scratch_metrics_and_report(run_with_baseline):
    metrics = json.loads((run_with_baseline / "experiments/tiny/latest/metrics.json").read_text())
    baseline = metrics["baseline"]["scratch"]
    assert baseline["image_size"] == 32 and 1 <= baseline["epochs_trained"] <= 12
    # noisy solid colours are easy even from scratch: the baseline must learn them
    assert baseline["test_accuracy"] >= 0.6
    report = (run_with_baseline / "experiments/tiny/latest/report.md").read_text()
    assert "from scratch (small CNN, 32px" in report


def test_scratch_is_reproducible(run_with_baseline):
    v1 = (run_with_baseline / "experiments/tiny/v1/metrics.json").read_text()
    v2 = (run_with_baseline / "experiments/tiny/v2/metrics.json").read_text()
    assert v1 == v2

"""Results as frozen dataclasses with one JSON form (metrics.json)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vggtl.training.results import FinetunePhase, HeadPhase, RunMetrics


def split_doc(accuracy: float) -> dict:
    return {"accuracy": accuracy, "n": 4, "accuracy_ci95": [0.1, 0.9]}


def metrics(**changes) -> RunMetrics:
    base = RunMetrics(
        train=split_doc(1.0), val=split_doc(0.75), test=split_doc(0.5),
        baseline={"linear_probe": {"test_accuracy": 0.25}},
        split={"seed": 1, "val": 0.25, "test": 0.25, "digest": "ab" * 32, "sizes": {"train": 8, "val": 4, "test": 4}},
        phase1=HeadPhase({"train": 1.0, "val": 0.75, "test": 0.5}, 12, 4, False),
        leakage={"identical": []},
    )
    return dataclasses.replace(base, **changes)


def test_metrics_json_has_a_fixed_key_order_and_round_trips():
    m = metrics(phase2=FinetunePhase(1, 3, 2, True, "CPU:0", False), temperature={"temperature": 1.5})
    doc = m.to_json()
    assert list(doc) == ["train", "val", "test", "baseline", "split", "phase1", "epochs_trained", "best_epoch",
                         "leakage", "phase2", "temperature"]
    assert doc["phase1"] == {"train": {"accuracy": 1.0}, "val": {"accuracy": 0.75}, "test": {"accuracy": 0.5},
                             "epochs_trained": 12, "best_epoch": 4, "hit_epoch_cap": False}
    assert list(doc["phase2"]) == ["blocks", "epochs_trained", "best_epoch", "kept", "devices", "hit_epoch_cap"]
    assert RunMetrics.from_json(json.loads(json.dumps(doc))) == m
    with_cv = metrics(cv={"folds": 3}).to_json()
    assert list(with_cv)[8:10] == ["cv", "leakage"]  # cross-validation sits before the leakage audit, as ever


def test_results_are_frozen():
    m = metrics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.test = split_doc(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.phase1.best_epoch = 0
    assert dataclasses.replace(m, tensorflow_fp32={"test_accuracy": 0.5}).to_json()["tensorflow_fp32"] == {"test_accuracy": 0.5}
    assert "tensorflow_fp32" not in m.to_json()


def test_an_older_metrics_json_reads_with_what_it_has():
    old = {"train": split_doc(1.0), "val": split_doc(0.5), "test": split_doc(0.5), "epochs_trained": 7, "best_epoch": 3}
    m = RunMetrics.from_json(old)
    assert (m.phase1.epochs_trained, m.phase1.best_epoch, m.phase2, m.cv, m.split) == (7, 3, None, None, {})
    assert m.of("val")["accuracy"] == 0.5
    with pytest.raises(ValueError, match="JSON object"):
        RunMetrics.from_json([1, 2])

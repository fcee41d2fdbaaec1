"""Report helpers: misclassification ranking, tables, figures written."""

from __future__ import annotations

import numpy as np

from vggtl.training import report


def test_worst_misclassified_ranks_confident_errors_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1])
    rows = np.array([10, 11, 12, 13])
    worst = report.worst_misclassified(rows, probs, labels)
    assert [w[0] for w in worst] == [11, 12]
    assert worst[0][1] == 0.8 and worst[0][2] == 1


def test_table():
    lines = report._table(["a", "b"], [[1, 2]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_figures(tmp_path):
    report.plot_confusion([[3, 1], [0, 4]], ["x", "y"], tmp_path / "cm.png")
    curves = {"loss": [1, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]}
    report.plot_curves({"phase1": curves, "phase2": curves}, tmp_path / "c.png")
    for name in ("cm.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

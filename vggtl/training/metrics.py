"""Numbers of a trained classifier: cross-entropy, per-split metrics, best epoch."""

from __future__ import annotations

import math

import numpy as np


def cross_entropy(y_true, probs) -> float:
    """Mean cross-entropy of ``probs`` at the true labels (no regularization terms)."""
    eps = 1e-7
    if not len(y_true):  # an empty split (data.split.val: 0): nothing to measure
        return math.nan
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))


def accuracy(y_true, probs) -> float:
    """Top-1 accuracy; NaN for an empty split."""
    return float(np.mean(np.asarray(probs).argmax(axis=1) == y_true)) if len(y_true) else math.nan


def best_epoch(history: dict) -> int:
    """1-based epoch whose weights were kept: recorded by the head's own loop,
    else (Keras fit, phase 2) the lowest ``val_loss``."""
    if "best_epoch" in history:
        return int(history["best_epoch"])
    return int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else len(history["loss"])


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (``correct`` of ``n``).

    Unlike the normal approximation it stays inside [0, 1] and is honest at
    the sizes vggtl sees (a test split of 30 images, accuracy near 1).
    """
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


CALIBRATION_BINS = 10


def calibration(y_true, probs, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of the top-1 confidence, with its reliability bins.

    The images are binned by the confidence of their predicted class (equal
    widths over [0, 1]); ECE is the image-weighted mean |accuracy - mean
    confidence| over the bins: 0 for a model whose "80% sure" is right 80% of
    the time.
    """
    if not len(y_true):
        return {"ece": None, "bins": []}
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        if n:
            acc, conf = float(correct[members].mean()), float(confidence[members].mean())
            ece += n * abs(acc - conf)
            table.append({"low": round(float(edges[b]), 3), "high": round(float(edges[b + 1]), 3), "count": n,
                          "confidence": round(conf, 6), "accuracy": round(acc, 6)})
    return {"ece": round(ece / max(len(confidence), 1), 6), "bins": table}


def split_metrics(y_true, probs, class_names) -> dict:
    """Accuracy with its 95% Wilson interval, loss, per-class precision/recall/F1
    and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if not len(y_true):  # data.split.val or .test: 0 -- recorded as measured on nothing, never as a number
        return {"accuracy": None, "accuracy_ci95": None, "loss": None, "macro_f1": None, "n": 0, "per_class": {},
                "confusion_matrix": [], "calibration": {"ece": None, "bins": []}}
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    low, high = wilson_interval(int(np.sum(y_pred == y_true)), len(y_true))
    return {
        "accuracy": round(float(np.mean(y_pred == y_true)), 6),
        "accuracy_ci95": [round(low, 6), round(high, 6)],
        "loss": round(cross_entropy(y_true, probs), 6),
        "macro_f1": round(float(np.mean(f1)), 6),
        "n": int(len(y_true)),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "calibration": calibration(y_true, probs),
    }

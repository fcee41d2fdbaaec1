"""Numbers of a trained classifier: cross-entropy, per-split metrics, best epoch."""

from __future__ import annotations

import numpy as np


def cross_entropy(y_true, probs) -> float:
    """Mean cross-entropy of ``probs`` at the true labels (no regularization terms)."""
    eps = 1e-7
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))


def accuracy(y_true, probs) -> float:
    return float(np.mean(np.asarray(probs).argmax(axis=1) == y_true))


def best_epoch(history: dict) -> int:
    """1-based epoch of the lowest ``val_loss`` (the weights early stopping restores)."""
    return int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else len(history["loss"])


def split_metrics(y_true, probs, class_names) -> dict:
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(np.mean(y_pred == y_true)), 6),
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
    }

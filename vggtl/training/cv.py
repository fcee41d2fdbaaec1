"""Cross-validation on cached features: K stratified folds over train + val.

The test split is never touched. In each fold the head (exactly as phase 1
trains it, probe average included) and the linear probe are fitted on the
other folds and scored on the held-out fold; the head's early stopping watches
an inner validation slice of the training folds (``data.split.val`` of them),
never the fold it is scored on. Clean features only (augmented views are left
out, so folds compare heads, not augmentation). The final artifact is trained
as without cross-validation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vggtl import config
from vggtl.errors import ConfigError
from vggtl.features.store import FeatureStore
from vggtl.training import baselines, fit, heads
from vggtl.training.metrics import accuracy, cross_entropy


@dataclass
class FoldData:
    """What every fold needs, read from the store once: the train + val maps,
    their labels, and per fold (inner train, inner val, held-out) indices."""

    maps: np.ndarray
    labels: np.ndarray
    n_classes: int
    folds: list = field(default_factory=list)


def fold_data(cfg: config.Config, fs: FeatureStore, folds: int) -> FoldData:
    """Stratified ``folds`` of train + val (seeded by the split seed), each with
    an inner validation slice of its training part for early stopping.

    Raises:
        ConfigError: a class has fewer images in train + val than ``folds``.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    rows = check_folds(fs, folds)
    labels = fs.labels[rows]
    plan = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.split_seed)
    for fold, (fit_idx, held_idx) in enumerate(splitter.split(rows, labels)):
        inner_train, inner_val = train_test_split(
            fit_idx, test_size=max(cfg.data.split.val, 0.1), stratify=labels[fit_idx], random_state=cfg.split_seed + fold
        )
        plan.append((fit_idx, inner_train, inner_val, held_idx))
    return FoldData(fs.features(rows), labels, len(fs.class_names), plan)


def head_scores(cfg: config.Config, data: FoldData) -> dict:
    """Per-fold held-out accuracy and log loss of the head as phase 1 trains it.

    Raises:
        TrainingError: a fold's training diverged.
    """
    maps, labels = data.maps, data.labels
    scores = {"accuracy": [], "log_loss": []}
    for _, inner_train, inner_val, held in data.folds:
        head, _ = fit.fit_head(cfg, maps[inner_train][None], labels[inner_train], maps[inner_val], labels[inner_val], data.n_classes)
        probs = head.predict(maps[held], verbose=0)
        scores["accuracy"].append(accuracy(labels[held], probs))
        scores["log_loss"].append(cross_entropy(labels[held], probs))
    return scores


def cross_validate(cfg: config.Config, fs: FeatureStore, folds: int) -> dict:
    """Mean, sd and per-fold accuracy of the head and the probe over ``folds`` folds.

    Raises:
        ConfigError: a class has fewer images in train + val than ``folds``.
    """
    started = time.perf_counter()
    data = fold_data(cfg, fs, folds)
    pooled = heads.pool_numpy(data.maps, "avg")
    probe = [_probe_accuracy(pooled, data.labels, fit_idx, held, cfg.seed) for fit_idx, _, _, held in data.folds]
    scores = {"head": head_scores(cfg, data)["accuracy"], "probe": probe}
    summary = {name: summary_of(values) for name, values in scores.items()}
    return {"folds": folds, "images": int(len(data.labels)), **summary, "seconds": round(time.perf_counter() - started, 1)}


def check_folds(fs: FeatureStore, folds: int) -> np.ndarray:
    """The index rows cross-validation uses (train + val), after checking every
    class has at least ``folds`` of them.

    Raises:
        ConfigError: naming the classes that are too small.
    """
    rows = np.concatenate([fs.split_rows("train"), fs.split_rows("val")])
    counts = np.bincount(fs.labels[rows], minlength=len(fs.class_names))
    small = [f"{name} ({n})" for name, n in zip(fs.class_names, counts) if n < folds]
    if small:
        raise ConfigError(
            f"key 'train.folds': {folds} folds need at least {folds} images of every class in train + val; "
            f"too few: {', '.join(small)}; lower train.folds"
        )
    return rows


def _probe_accuracy(pooled, labels, fit_idx, held_idx, seed: int) -> float:
    """The linear-probe baseline (standardized avg-pooled features, logistic regression) on one fold."""
    model = baselines.probe_model(seed).fit(pooled[fit_idx], labels[fit_idx])
    return float(model.score(pooled[held_idx], labels[held_idx]))


def summary_of(values) -> dict:
    """``{"mean", "sd", "per_fold"}`` of per-fold scores."""
    values = np.asarray(values, dtype=float)
    return {"mean": round(float(values.mean()), 6), "sd": round(float(values.std()), 6), "per_fold": [round(float(v), 6) for v in values]}

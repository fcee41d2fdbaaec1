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

import numpy as np

from vggtl import config
from vggtl.errors import ConfigError
from vggtl.features.store import FeatureStore
from vggtl.training import baselines, fit, heads
from vggtl.training.metrics import accuracy


def cross_validate(cfg: config.Config, fs: FeatureStore, folds: int) -> dict:
    """Mean, sd and per-fold accuracy of the head and the probe over ``folds`` folds.

    Raises:
        ConfigError: a class has fewer images in train + val than ``folds``.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    started = time.perf_counter()
    rows = check_folds(fs, folds)
    labels = fs.labels[rows]
    maps = fs.features(rows)
    pooled = heads.pool_numpy(maps, "avg")
    scores = {"head": [], "probe": []}
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.split_seed)
    for fold, (fit_idx, held_idx) in enumerate(splitter.split(rows, labels)):
        inner_train, inner_val = train_test_split(
            fit_idx, test_size=max(cfg.data.split.val, 0.1), stratify=labels[fit_idx], random_state=cfg.split_seed + fold
        )
        head, _ = fit.fit_head(cfg, maps[inner_train][None], labels[inner_train], maps[inner_val], labels[inner_val], len(fs.class_names))
        scores["head"].append(accuracy(labels[held_idx], head.predict(maps[held_idx], verbose=0)))
        scores["probe"].append(_probe_accuracy(pooled, labels, fit_idx, held_idx, cfg.seed))
    summary = {name: _summary(values) for name, values in scores.items()}
    return {"folds": folds, "images": int(len(rows)), **summary, "seconds": round(time.perf_counter() - started, 1)}


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


def _summary(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {"mean": round(float(values.mean()), 6), "sd": round(float(values.std()), 6), "per_fold": [round(float(v), 6) for v in values]}

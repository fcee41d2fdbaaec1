"""Cross-validation on cached features: K stratified folds over train + val.

The test split is never touched. In each fold the head is trained exactly as
phase 1 of ``vggtl train`` trains it -- the same function
(:func:`vggtl.training.fit.fit_head_on_pooled`) on pooled vectors read from
the store in batches, augmented views included, probe average included --
and scored, with the linear probe, on the held-out fold; the head's early
stopping watches an inner validation slice of the training folds
(``data.split.val`` of them), never the fold it is scored on. The final
artifact is trained as without cross-validation.

Views: extraction stores augmented views for the training split's images. An
image of the val split that has none (it was never in a training split)
counts with its clean features in every draw of a fold that trains on it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggtl import blas, config
from vggtl.errors import ConfigError
from vggtl.features.store import FeatureStore
from vggtl.training import baselines, fit
from vggtl.training.metrics import accuracy, cross_entropy


@dataclass
class FoldData:
    """What every fold needs: the store's train + val rows, their labels, the
    augmented views to draw from, and per fold (inner train, inner val,
    held-out) indices into those rows. Small and picklable (``vggtl tune``
    sends it to worker processes); features are read from ``store_path``
    when a pooling is first asked for (:meth:`pooled_bank`)."""

    store_path: Path
    rows: np.ndarray
    labels: np.ndarray
    n_classes: int
    views: int
    folds: list = field(default_factory=list)
    _banks: dict = field(default_factory=dict, repr=False)

    def pooled_bank(self, fs: FeatureStore, pooling: str) -> np.ndarray:
        """``(views + 1, N, D)``: :func:`vggtl.training.fit.pooled_bank` of every
        row (a row without stored views repeats its clean vectors), read from
        ``fs`` once per pooling."""
        if pooling not in self._banks:
            self._banks[pooling] = fit.pooled_bank(fs, self.rows, pooling, self.views, clean_if_missing=True)
        return self._banks[pooling]


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
    return FoldData(Path(fs.path), rows, labels, len(fs.class_names), cfg.augment.views, plan)


def head_scores(cfg: config.Config, data: FoldData, fs: FeatureStore | None = None) -> dict:
    """Per-fold held-out accuracy and log loss of the head as phase 1 trains it.

    Args:
        cfg: the settings to score (``head.*``, ``train.*``).
        data: from :func:`fold_data`.
        fs: the open store of ``data``; None opens ``data.store_path`` (a
            ``vggtl tune`` worker).

    Raises:
        TrainingError: a fold's training diverged.
    """
    with FeatureStore(data.store_path) if fs is None else contextlib.nullcontext(fs) as store:
        bank, labels = data.pooled_bank(store, cfg.head.pooling), data.labels
        scores = {"accuracy": [], "log_loss": []}
        for _, inner_train, inner_val, held in data.folds:
            head, _ = fit.fit_head_on_pooled(cfg, bank[:, inner_train], store.feature_shape, labels[inner_train],
                                             bank[0, inner_val], labels[inner_val], data.n_classes)
            probs = fit.Split(data.rows[held], labels[held], store).predict(head)
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
    pooled = fit.pooled_features(fs, data.rows, "avg")  # the probe trains on clean features only
    probe = [_probe_accuracy(pooled, data.labels, fit_idx, held, cfg.seed) for fit_idx, _, _, held in data.folds]
    scores = {"head": head_scores(cfg, data, fs)["accuracy"], "probe": probe}
    summary = {name: summary_of(values) for name, values in scores.items()}
    return {"folds": folds, "images": int(len(data.labels)), **summary, "seconds": round(time.perf_counter() - started, 1)}


def too_small_classes(labels: np.ndarray, class_names, folds: int) -> list[str]:
    """``"name (count)"`` of every class with fewer than ``folds`` of ``labels``:
    stratified folds need one image of each class per fold."""
    counts = np.bincount(labels, minlength=len(class_names))
    return [f"{name} ({n})" for name, n in zip(class_names, counts) if n < folds]


def check_folds(fs: FeatureStore, folds: int) -> np.ndarray:
    """The index rows cross-validation uses (train + val), after checking every
    class has at least ``folds`` of them.

    Raises:
        ConfigError: naming the classes that are too small.
    """
    rows = np.concatenate([fs.split_rows("train"), fs.split_rows("val")])
    small = too_small_classes(fs.labels[rows], fs.class_names, folds)
    if small:
        raise ConfigError(
            f"key 'train.folds': {folds} folds need at least {folds} images of every class in train + val; "
            f"too few: {', '.join(small)}; lower train.folds"
        )
    return rows


def _probe_accuracy(pooled, labels, fit_idx, held_idx, seed: int) -> float:
    """The linear-probe baseline (standardized avg-pooled features, logistic regression) on one fold."""
    model = blas.fit(baselines.probe_model(seed), pooled[fit_idx], labels[fit_idx])
    return float(model.score(pooled[held_idx], labels[held_idx]))


def summary_of(values) -> dict:
    """``{"mean", "sd", "per_fold"}`` of per-fold scores."""
    values = np.asarray(values, dtype=float)
    return {"mean": round(float(values.mean()), 6), "sd": round(float(values.std()), 6), "per_fold": [round(float(v), 6) for v in values]}

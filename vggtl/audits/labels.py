"""Label issues: images whose given label the rest of the data disagrees with.

Out-of-fold probabilities (every image scored by models that never saw it)
of an ensemble measured on clipart8 with labels flipped at random
(docs/audit.md): the mean of a standardized logistic regression and a
cosine-weighted k-nearest-neighbour vote, both on the signed-square-root
avg+max pooled features, over stratified folds repeated with different fold
seeds. Two views of "the rest of the data disagrees", ranked together (``score``:
the mean of their percentile ranks, in (0, 1], higher = more suspicious):

* how much likelier the best other class is than the given one under the
  ensemble (log p(best other) - log p(given)), which ranked flips better
  than p(given) alone (cleanlab's self-confidence) and than the normalized
  margin in that measurement;
* how much closer the image sits to the nearest images of another class
  than to those of its own (:func:`vggtl.audits.similar.class_similarity`).

How many of the top rows are *likely* issues is confident learning's
estimate (cleanlab's ``num_label_issues``: per-class thresholds on the same
out-of-fold probabilities), so the likely rows are a prefix of the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 10
LOGISTIC_C = 0.01  # strong L2: small folds of 1024-d vectors; measured best of 1, 0.1, 0.01
REPEATS = 3  # fold assignments averaged: less variance from which images share a fold
PROBABILITY_FLOOR = 1e-6


@dataclass(frozen=True)
class LabelFindings:
    """Per image (store rows, in order): out-of-fold probabilities, the two
    disagreement measures, their combined score, the suggested label and
    whether it is among the likely issues."""

    given: np.ndarray  # (N,) class index of the label the data gives
    probabilities: np.ndarray  # (N, C)
    log_ratio: np.ndarray  # (N,) log p(best other) - log p(given)
    neighbour_margin: np.ndarray  # (N,) similarity to the best other class - to the given class
    score: np.ndarray  # (N,) mean percentile rank of the two; higher = more suspicious
    suggested: np.ndarray  # (N,) class index of the likeliest other class
    likely: np.ndarray  # (N,) bool

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def disputed(self) -> np.ndarray:
        """Rows where either measure prefers another class: the rows ``issues.csv`` lists."""
        return (self.log_ratio > 0) | (self.neighbour_margin > 0)

    @property
    def accuracy(self) -> float:
        """Out-of-fold accuracy against the given labels."""
        return float(np.mean(self.predicted == self.given)) if len(self.given) else 0.0


def with_lower_layer(vectors: np.ndarray, fs, rows) -> np.ndarray:
    """The label model's vectors: the head layer's avg+max pooled ``vectors``,
    and when the store also holds a lower layer (a fine-tuning config's
    boundary, e.g. block4_pool) its avg+max pooled vectors beside them, each
    scaled to unit length so neither dominates. Measured on clipart8 with 5%
    / 10% of labels flipped (seeds 0-4, docs/audit.md): the first k label rows
    held 75.2% / 70.2% of the flips instead of 70.5% / 67.0%."""
    from vggtl.training.fit import pooled_features

    lower = lower_layer(fs)
    if lower is None:
        return vectors
    parts = [vectors, pooled_features(fs, rows, "avgmax", lower)]
    return np.hstack([p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts])


def lower_layer(fs) -> str | None:
    """The store's image layer below the head's (a fine-tuning boundary), if it holds one."""
    from vggtl.backbones import registry

    return next((layer for layer in fs.layers[1:] if layer != registry.STATS_LAYER), None)


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.sqrt(np.abs(x))


def out_of_fold(vectors: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """``(N, n_classes)`` probabilities, each row from models trained without it."""
    from sklearn.model_selection import StratifiedKFold

    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    total = np.zeros((len(labels), n_classes))
    for repeat in range(REPEATS):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fit_rows, held in splitter.split(vectors, labels):
            total[held] += ensemble_probabilities(vectors, unit, labels, fit_rows, held, n_classes, seed)
    return total / REPEATS


def ensemble_probabilities(vectors, unit, labels, fit_rows, held, n_classes: int, seed: int) -> np.ndarray:
    """Probabilities of the ``held`` rows from the ensemble trained on ``fit_rows``:
    the mean of :func:`logistic_probabilities` and :func:`neighbour_vote` (``unit``:
    the L2-normalised ``vectors``)."""
    return 0.5 * (logistic_probabilities(vectors, labels, fit_rows, held, n_classes, seed)
                  + neighbour_vote(unit, labels, fit_rows, held, n_classes))


def logistic_probabilities(vectors, labels, fit_rows, held, n_classes: int, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # tol 1e-3: a third of the iterations of the default 1e-4; flips found within one image of it (docs/audit.md)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, tol=1e-3, max_iter=1000, random_state=seed))
    model.fit(vectors[fit_rows], labels[fit_rows])
    probs = np.zeros((len(held), n_classes))
    probs[:, model.classes_] = model.predict_proba(vectors[held])
    return probs


def neighbour_vote(unit, labels, fit_rows, held, n_classes: int) -> np.ndarray:
    """Class shares of the ``NEIGHBOURS`` most similar training rows, weighted by cosine."""
    sims = unit[held] @ unit[fit_rows].T
    k = min(NEIGHBOURS, len(fit_rows))
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    votes = np.full((len(held), n_classes), 1e-3)
    weights = np.maximum(np.take_along_axis(sims, nearest, axis=1), 0.0)
    np.add.at(votes, (np.repeat(np.arange(len(held)), k), labels[fit_rows][nearest].ravel()), weights.ravel())
    return votes / votes.sum(axis=1, keepdims=True)


def find(vectors: np.ndarray, labels: np.ndarray, similarity: np.ndarray, folds: int, seed: int) -> LabelFindings:
    """:class:`LabelFindings` of every row of ``vectors`` (avg+max pooled features)
    with ``labels``; ``similarity`` is :func:`vggtl.audits.similar.class_similarity`."""
    from cleanlab.count import num_label_issues
    from scipy.stats import rankdata

    n_classes = similarity.shape[1]
    probs = out_of_fold(signed_sqrt(vectors), labels, n_classes, folds, seed)
    probs = np.maximum(probs, PROBABILITY_FLOOR)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    suggested, best_other = _best_other(probs, labels)
    log_ratio = np.log(best_other) - np.log(probs[rows, labels])
    margin = _best_other(similarity, labels)[1] - similarity[rows, labels]
    score = (rankdata(log_ratio) + rankdata(margin)) / (2 * len(labels))
    likely = np.zeros(len(labels), dtype=bool)
    count = int(num_label_issues(labels, probs))
    likely[np.argsort(-score, kind="stable")[:count]] = True
    return LabelFindings(labels, probs, log_ratio, margin, score, suggested, likely & ((log_ratio > 0) | (margin > 0)))


def _best_other(table: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the column with the largest value other than the row's label, and that value."""
    others = table.astype(np.float64, copy=True)
    others[np.arange(len(labels)), labels] = -np.inf
    best = others.argmax(axis=1)
    return best, others[np.arange(len(labels)), best]

"""Label issues: images whose given label the rest of the data disagrees with.

Out-of-fold scores (every image scored by models that never saw it), over
stratified folds repeated with different fold seeds, on the signed-square-root
avg+max pooled features; a method chosen on clipart8 with labels flipped at
random (docs/audit.md: chosen on flip seeds 10-19, confirmed on 0-4 and
20-29). Three views of "the rest of the data disagrees", ranked together
(``score``: the mean of their percentile ranks, in (0, 1], higher = more
suspicious):

* how much likelier the best other class is than the given one (log p(best
  other) - log p(given)) under an ensemble: the mean of a standardized
  logistic regression, a cosine-weighted k-nearest-neighbour vote and a
  shrinkage LDA on a 64-d PCA of the vectors. This ranked flips better than
  p(given) alone (cleanlab's self-confidence) and than the normalized margin;
* how much closer the image sits to the nearest images of another class
  than to those of its own (:func:`vggtl.audits.similar.class_similarity`);
* how far a linear SVM's decision value for the best other class exceeds the
  given class's (a margin, not a probability: it ranks differently from the
  ensemble, which is why it helps).

How many of the top rows are *likely* issues is confident learning's
estimate (cleanlab's ``num_label_issues``: per-class thresholds on the
ensemble's out-of-fold probabilities), so the likely rows are a prefix of the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vggtl import blas

NEIGHBOURS = 10
LOGISTIC_C = 0.01  # strong L2: small folds of 1024-d vectors; measured best of 1, 0.1, 0.01
REPEATS = 3  # fold assignments averaged: less variance from which images share a fold
PROBABILITY_FLOOR = 1e-6
LDA_DIMS = 64  # PCA dimensions the shrinkage LDA reads (measured: 64 beat 128 and the full 1024)
SVM_C = 1e-3  # measured best of 1e-4, 3e-4, 1e-3, 3e-3


@dataclass(frozen=True)
class LabelFindings:
    """Per image (store rows, in order): out-of-fold probabilities, the three
    disagreement measures, their combined score, the suggested label and
    whether it is among the likely issues."""

    given: np.ndarray  # (N,) class index of the label the data gives
    probabilities: np.ndarray  # (N, C)
    log_ratio: np.ndarray  # (N,) log p(best other) - log p(given)
    neighbour_margin: np.ndarray  # (N,) similarity to the best other class - to the given class
    svm_margin: np.ndarray  # (N,) SVM decision value of the best other class - of the given class
    score: np.ndarray  # (N,) mean percentile rank of the three; higher = more suspicious
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


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold scores of every row, averaged over the repeated fold assignments."""

    probabilities: np.ndarray  # (N, C) the ensemble's
    svm_decisions: np.ndarray  # (N, C) the linear SVM's decision values


def out_of_fold(vectors: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int) -> OutOfFold:
    """Scores of each row from models trained without it (:class:`OutOfFold`)."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    # Label-free transforms fitted on every row: no label reaches a held-out row through them.
    reduced = PCA(min(LDA_DIMS, len(labels) - 1, vectors.shape[1]), random_state=seed).fit_transform(vectors)
    standard = StandardScaler().fit_transform(vectors)
    probabilities, decisions = np.zeros((len(labels), n_classes)), np.zeros((len(labels), n_classes))
    for repeat in range(REPEATS):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fit_rows, held in splitter.split(vectors, labels):
            # the mean of three models: the logistic regression and the kNN vote, and the LDA
            probabilities[held] += (2 * ensemble_probabilities(vectors, unit, labels, fit_rows, held, n_classes, seed)
                                    + lda_probabilities(reduced, labels, fit_rows, held, n_classes)) / 3
            decisions[held] += svm_decisions(standard, labels, fit_rows, held, n_classes, seed)
    return OutOfFold(probabilities / REPEATS, decisions / REPEATS)


def ensemble_probabilities(vectors, unit, labels, fit_rows, held, n_classes: int, seed: int) -> np.ndarray:
    """Probabilities of the ``held`` rows from the mean of :func:`logistic_probabilities`
    and :func:`neighbour_vote` trained on ``fit_rows`` (``unit``: the L2-normalised
    ``vectors``); the learning curve's model."""
    return 0.5 * (logistic_probabilities(vectors, labels, fit_rows, held, n_classes, seed)
                  + neighbour_vote(unit, labels, fit_rows, held, n_classes))


def logistic_probabilities(vectors, labels, fit_rows, held, n_classes: int, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # tol 1e-3: a third of the iterations of the default 1e-4; flips found within one image of it (docs/audit.md)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, tol=1e-3, max_iter=1000, random_state=seed))
    blas.fit(model, vectors[fit_rows], labels[fit_rows])
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


def lda_probabilities(reduced, labels, fit_rows, held, n_classes: int) -> np.ndarray:
    """Class probabilities of a shrinkage LDA (Ledoit-Wolf) on the PCA-``reduced`` vectors."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(reduced[fit_rows], labels[fit_rows])
    probs = np.zeros((len(held), n_classes))
    probs[:, lda.classes_] = lda.predict_proba(reduced[held])
    return probs


def svm_decisions(standard, labels, fit_rows, held, n_classes: int, seed: int) -> np.ndarray:
    """``(len(held), n_classes)`` decision values of a linear SVM (one-vs-rest) on
    the ``standard``-ized vectors; a class absent from ``fit_rows`` gets -10."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=SVM_C, max_iter=5000, random_state=seed).fit(standard[fit_rows], labels[fit_rows])
    values = svm.decision_function(standard[held])
    if values.ndim == 1:  # two classes: one value, positive for the second
        values = np.stack([-values, values], axis=1)
    decisions = np.full((len(held), n_classes), -10.0)
    decisions[:, svm.classes_] = values
    return decisions


def find(vectors: np.ndarray, labels: np.ndarray, similarity: np.ndarray, folds: int, seed: int) -> LabelFindings:
    """:class:`LabelFindings` of every row of ``vectors`` (avg+max pooled features)
    with ``labels``; ``similarity`` is :func:`vggtl.audits.similar.class_similarity`."""
    from cleanlab.count import num_label_issues
    from scipy.stats import rankdata

    n_classes = similarity.shape[1]
    scores = out_of_fold(signed_sqrt(vectors), labels, n_classes, folds, seed)
    probs = np.maximum(scores.probabilities, PROBABILITY_FLOOR)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    suggested, best_other = _best_other(probs, labels)
    log_ratio = np.log(best_other) - np.log(probs[rows, labels])
    margin = _best_other(similarity, labels)[1] - similarity[rows, labels]
    svm_margin = _best_other(scores.svm_decisions, labels)[1] - scores.svm_decisions[rows, labels]
    score = (rankdata(log_ratio) + rankdata(margin) + rankdata(svm_margin)) / (3 * len(labels))
    likely = np.zeros(len(labels), dtype=bool)
    count = int(num_label_issues(labels, probs))
    likely[np.argsort(-score, kind="stable")[:count]] = True
    return LabelFindings(labels, probs, log_ratio, margin, svm_margin, score, suggested,
                         likely & ((log_ratio > 0) | (margin > 0)))


def _best_other(table: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the column with the largest value other than the row's label, and that value."""
    others = table.astype(np.float64, copy=True)
    others[np.arange(len(labels)), labels] = -np.inf
    best = others.argmax(axis=1)
    return best, others[np.arange(len(labels)), best]

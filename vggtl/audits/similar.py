"""Duplicates and off-topic images, from the cached features.

Duplicates are pairs of images with the same content (one stored entry) or
whose L2-normalised avg-pooled features have a cosine of at least
``audit.near_duplicate`` -- the leakage audit's measure, here over every
pair in the data, not only across splits: within a class (a wasted slot, and
a test image with its twin in train), across classes (one image, two labels:
one of them is wrong) and across splits.

Off-topic images are far from every class: an image's distance to a class is
its mean cosine distance to its ``NEIGHBOURS`` nearest images of that class
(itself left out, :func:`class_similarity`); its outlier score is the smallest
of these over the classes. Flagged when the score is above the median by more than
``MAD_LIMIT`` robust standard deviations of all images' scores -- a rule
that flags nothing in data without such images, unlike a fixed top share.
"""

from __future__ import annotations

import numpy as np

from vggtl.training import leakage

NEIGHBOURS = 5
MAD_LIMIT = 4.0


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def duplicate_pairs(unit: np.ndarray, entries: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)`` with ``i < j`` for every pair of rows with the same
    content entry (cosine 1.0) or a cosine of at least ``threshold``, in row order."""
    pairs = []
    block = max(1, leakage.SIMILARITY_CELLS // max(1, len(unit)))  # the leakage audit's memory bound
    for start in range(0, len(unit), block):
        sims = unit[start : start + block] @ unit.T
        i, j = np.nonzero((sims >= threshold) | (entries[start : start + block, None] == entries[None, :]))
        i = i + start
        keep = i < j
        same = entries[i[keep]] == entries[j[keep]]
        cosine = np.where(same, 1.0, np.round(sims[i[keep] - start, j[keep]].astype(np.float64), 4))
        pairs += list(zip(i[keep].tolist(), j[keep].tolist(), cosine.tolist()))
    return pairs


def class_similarity(unit: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N, n_classes)``: each row's mean cosine similarity to its :data:`NEIGHBOURS`
    most similar images of each class (itself left out), computed in blocks of rows."""
    table = np.full((len(unit), n_classes), -1.0)
    for cls in range(n_classes):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        k = min(NEIGHBOURS, len(members) - 1)
        for start in range(0, len(unit), 1024):
            sims = unit[start : start + 1024] @ unit[members].T
            own = np.arange(start, start + len(sims))[:, None] == members[None, :]
            sims[own] = -np.inf  # an image is not its own neighbour
            table[start : start + len(sims), cls] = -np.partition(-sims, k - 1, axis=1)[:, :k].mean(axis=1)
    return table


def outlier_scores(similarity: np.ndarray) -> np.ndarray:
    """Per row: the mean cosine distance to the nearest images of the nearest class
    (``1 - max`` over the classes of :func:`class_similarity`)."""
    return 1.0 - similarity.max(axis=1)


def outlier_limit(scores: np.ndarray) -> float:
    """Median + :data:`MAD_LIMIT` robust standard deviations (1.4826 x MAD) of ``scores``."""
    finite = scores[np.isfinite(scores)]
    median = float(np.median(finite))
    return median + MAD_LIMIT * 1.4826 * float(np.median(np.abs(finite - median)))

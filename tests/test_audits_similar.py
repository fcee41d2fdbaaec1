"""Duplicates and off-topic images on feature vectors."""

from __future__ import annotations

import numpy as np

from vggtl.audits import similar


def test_identical_entries_and_near_copies_are_pairs_nothing_else():
    rng = np.random.default_rng(0)
    vectors = rng.random((40, 64)).astype(np.float32) * (rng.random((40, 64)) > 0.5)
    vectors[30] = vectors[4] * 1.2 + rng.normal(0, 0.03, 64)  # a near copy
    entries = np.arange(40)
    entries[35] = entries[7]  # the same file content twice
    vectors[35] = vectors[7]
    pairs = similar.duplicate_pairs(similar.unit_vectors(vectors), entries, 0.98)
    assert [(i, j) for i, j, _ in pairs] == [(4, 30), (7, 35)]
    assert pairs[1][2] == 1.0 and 0.98 <= pairs[0][2] < 1.0


def test_blocks_give_the_same_pairs(monkeypatch):
    rng = np.random.default_rng(1)
    vectors = similar.unit_vectors(rng.random((50, 8)).astype(np.float32))
    whole = similar.duplicate_pairs(vectors, np.arange(50), 0.97)
    from vggtl.training import leakage

    monkeypatch.setattr(leakage, "SIMILARITY_CELLS", 60)  # one row per block
    assert similar.duplicate_pairs(vectors, np.arange(50), 0.97) == whole and whole


def test_an_image_of_no_class_is_the_only_outlier():
    rng = np.random.default_rng(2)
    centers = np.eye(3, 16) * 5
    vectors = np.concatenate([c + rng.normal(0, 0.3, (20, 16)) for c in centers])
    vectors = np.abs(vectors)
    vectors[7] = np.abs(rng.normal(0, 0.3, 16)) + np.eye(16)[10] * 5  # off-topic: a direction no class has
    unit = similar.unit_vectors(vectors)
    scores = similar.outlier_scores(similar.class_similarity(unit, np.repeat(np.arange(3), 20), 3))
    assert np.flatnonzero(scores > similar.outlier_limit(scores)).tolist() == [7]


def test_clean_data_has_no_outlier():
    rng = np.random.default_rng(3)
    vectors = np.abs(np.concatenate([c + rng.normal(0, 0.3, (25, 16)) for c in np.eye(2, 16) * 5]))
    scores = similar.outlier_scores(similar.class_similarity(similar.unit_vectors(vectors), np.repeat([0, 1], 25), 2))
    assert not (scores > similar.outlier_limit(scores)).any()

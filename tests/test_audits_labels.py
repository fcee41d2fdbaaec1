"""Label issues: out-of-fold probabilities, ranking, suggested labels, confident learning."""

from __future__ import annotations

import numpy as np

from vggtl.audits import labels, similar


def find(x, y, classes, folds=5, seed=0):
    unit = similar.unit_vectors(labels.signed_sqrt(x))
    return labels.find(x, y, similar.class_similarity(unit, y, classes), folds, seed)


def clustered(n_per_class=30, classes=4, dim=32, seed=0):
    """Well-separated classes in a ReLU-like (non-negative) feature space."""
    rng = np.random.default_rng(seed)
    centers = rng.random((classes, dim)) * 4
    x = np.concatenate([np.abs(c + rng.normal(0, 0.6, (n_per_class, dim))) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def test_flipped_labels_rank_first_with_their_true_class_suggested():
    x, y = clustered()
    noisy = y.copy()
    flipped = [3, 40, 77, 101]
    for i in flipped:
        noisy[i] = (y[i] + 1) % 4
    found = find(x, noisy, 4)
    order = np.argsort(-found.score, kind="stable")
    assert set(order[:4].tolist()) == set(flipped)
    assert all(found.suggested[i] == y[i] for i in flipped)
    assert found.likely[flipped].all() and found.likely.sum() <= 8
    assert found.probabilities.shape == (120, 4) and np.allclose(found.probabilities.sum(axis=1), 1)


def test_every_probability_is_out_of_fold():
    """A row's probabilities come from models that never saw it: a unique,
    mislabeled point far from everything cannot vote for its own label."""
    x, y = clustered()
    x[0] = x[60]  # row 0 sits inside class 2, labeled 0
    found = find(x, y, 4)
    assert found.predicted[0] == 2 and found.disputed[0] and found.suggested[0] == 2


def test_same_input_same_result():
    x, y = clustered(seed=3)
    a, b = find(x, y, 4, 5, 1), find(x, y, 4, 5, 1)
    assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.likely, b.likely)
    assert np.array_equal(a.svm_margin, b.svm_margin) and np.array_equal(a.score, b.score)


def test_clean_separable_data_has_no_likely_issue():
    x, y = clustered(seed=5)
    found = find(x, y, 4)
    assert found.accuracy == 1.0 and not found.likely.any() and not found.disputed.any()


def test_each_signal_sees_the_flip_and_the_score_ranks_all_three():
    """The ensemble's log-ratio, the neighbour margin and the SVM's margin each
    put a flipped row above every correctly labeled one of well-separated
    classes; the score is the mean of their percentile ranks."""
    from scipy.stats import rankdata

    x, y = clustered(seed=2)
    noisy = y.copy()
    noisy[[5, 70]] = [1, 3]
    found = find(x, noisy, 4)
    clean = np.setdiff1d(np.arange(len(y)), [5, 70])
    for signal in (found.log_ratio, found.neighbour_margin, found.svm_margin):
        assert signal[[5, 70]].min() > signal[clean].max()
    ranks = sum(rankdata(s) for s in (found.log_ratio, found.neighbour_margin, found.svm_margin))
    np.testing.assert_allclose(found.score, ranks / (3 * len(y)))


def test_two_classes_get_both_svm_decisions():
    """A linear SVM of two classes gives one value per row: both columns are filled."""
    x, y = clustered(classes=2, seed=4)
    decisions = labels.svm_decisions(x, y, np.arange(0, 60, 2), np.arange(1, 60, 2), 2, seed=0)
    assert decisions.shape == (30, 2) and np.array_equal(decisions[:, 0], -decisions[:, 1])
    assert (decisions.argmax(axis=1) == y[1::2]).all()
    noisy = y.copy()
    noisy[3] = 1 - noisy[3]
    found = find(x, noisy, 2)
    assert np.argsort(-found.score, kind="stable")[0] == 3 and found.suggested[3] == y[3]

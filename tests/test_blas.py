"""vggtl.blas: scikit-learn's small L-BFGS fits on one BLAS thread."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from vggtl import blas
from vggtl.training import heads


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.fixture
def fits_seen(monkeypatch):
    """The BLAS thread counts each LogisticRegression.fit ran with."""
    from sklearn.linear_model import LogisticRegression

    seen, original = [], LogisticRegression.fit

    def recording(self, *args, **kwargs):
        seen.append(blas_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording)
    return seen


def test_one_thread_inside_and_the_setting_restored_after():
    if not blas_threads():
        pytest.skip("NumPy has no BLAS that threadpoolctl can see")
    with threadpool_limits(2, user_api="blas"):
        with blas.one_thread():
            assert blas_threads() == {1}
        assert blas_threads() == {2}


def test_the_probe_is_fitted_on_one_thread_with_the_same_weights(fits_seen):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 16)), np.repeat(np.arange(3), 40)
    x[np.arange(120), y] += 2.0
    stats = heads.probe_stats(x)
    with threadpool_limits(2, user_api="blas"):  # what NumPy would use on a 2-core machine
        kernel, bias = heads.fit_probe(x, y, stats, 3, seed=0)
    assert fits_seen and all(threads == {1} for threads in fits_seen)
    with threadpool_limits(1, user_api="blas"):
        from sklearn.linear_model import LogisticRegression

        z = (x - stats[0]) / np.sqrt(stats[1])
        direct = LogisticRegression(max_iter=heads.PROBE_MAX_ITER, random_state=0).fit(z, y)
    np.testing.assert_array_equal(kernel, direct.coef_.T.astype(np.float32))
    np.testing.assert_array_equal(bias, direct.intercept_.astype(np.float32))


def separable(n: int, d: int = 8, classes: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), np.tile(np.arange(classes), n // classes)
    x[np.arange(n), y] += 3.0
    return x, y


def test_the_linear_probe_baseline_fits_on_one_thread(fits_seen, monkeypatch):
    from vggtl.training import baselines

    x, y = separable(90)

    class Store:  # what linear_probe reads of a FeatureStore
        labels, class_names = y, ["a", "b", "c"]

        def split_rows(self, split):
            return {"train": np.arange(60), "val": np.arange(60, 75), "test": np.arange(75, 90)}[split]

    monkeypatch.setattr(baselines, "pooled_features", lambda fs, rows, pooling: x[rows])
    with threadpool_limits(2, user_api="blas"):
        scores = baselines.linear_probe(Store(), seed=0)
    assert fits_seen == [{1}] and scores["test_accuracy"] > 0.8


def test_cross_validation_and_the_label_audit_fit_on_one_thread(fits_seen):
    from vggtl.audits import labels
    from vggtl.training import cv

    x, y = separable(60)
    fit_rows, held = np.arange(45), np.arange(45, 60)
    with threadpool_limits(2, user_api="blas"):
        fold = cv._probe_accuracy(x, y, fit_rows, held, seed=0)
        probs = labels.logistic_probabilities(x, y, fit_rows, held, 3, seed=0)
    assert fits_seen == [{1}, {1}]
    assert fold > 0.8 and probs.shape == (15, 3)

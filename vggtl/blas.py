"""BLAS threads for small, iterative solvers.

scikit-learn's L-BFGS logistic regression calls BLAS hundreds of times on
small matrices; waking and joining OpenBLAS's second thread for each call
costs more than the thread computes. Measured on 2 cores, multinomial
logistic regression on 512-d vectors of 8 classes, two BLAS threads -> one:
300 rows 0.074 -> 0.006 s, 3,000 rows 0.175 -> 0.041 s, 20,000 rows
0.347 -> 0.228 s; in ``vggtl train`` on clipart8 (the linear probe, beside the
end-to-end check's convolutions) 0.75 -> 0.09 s, ``metrics.json`` unchanged.
Large single products (the leakage audit's similarity blocks) keep every
thread: there a second one pays (20,000 x 1,024 by 2,000: 1.26 -> 0.70 s).
"""

from __future__ import annotations


def one_thread():
    """A context in which NumPy's and SciPy's BLAS run on one thread (restored on exit)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def fit(model, x, y):
    """``model.fit(x, y)`` (a scikit-learn estimator) with :func:`one_thread`; returns the model."""
    with one_thread():
        return model.fit(x, y)

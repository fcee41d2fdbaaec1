"""Temperature scaling fitted on the validation split, applied inside the model.

Every softmax of the trained model (the head's ``predictions`` layer and, with
``head.probe``, the probe's) computes ``softmax(W x + b)``. Dividing ``W``
and ``b`` by a temperature ``T`` divides the logits by ``T``: probabilities
become softer (``T > 1``) or sharper (``T < 1``) with no new layer, so
``model.keras`` still loads with plain Keras and every export carries it. One
``T`` is shared by both softmaxes and chosen to minimise the validation
cross-entropy of the model's output (Guo et al., 2017). For a single softmax
the predicted class never changes; averaged with the probe it can, rarely.
"""

from __future__ import annotations

import numpy as np

from vggtl.training.metrics import cross_entropy

LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def softmax_denses(model) -> list:
    """The Dense layers with a softmax activation in ``model``, nested models included."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += softmax_denses(layer)
        elif isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax":
            found.append(layer)
    return found


def fit_temperature(model, predict_val, y_val) -> dict:
    """Find and apply the temperature minimising the validation cross-entropy.

    Args:
        model: the trained model on cached features (its softmax Dense layers
            are shared with the end-to-end model, which therefore changes too).
        predict_val: ``model -> probabilities`` of the validation images
            (e.g. ``lambda m: m.predict(x_val)``, or a split read from the store).
        y_val: validation labels.

    Returns:
        ``{"temperature", "val_loss_before", "val_loss_after"}``.
    """
    from scipy.optimize import minimize_scalar

    originals = [dense.get_weights() for dense in softmax_denses(model)]

    def loss_at(log_t: float) -> float:
        _set(model, originals, np.exp(-log_t))
        return cross_entropy(y_val, predict_val(model))

    before = loss_at(0.0)
    best = minimize_scalar(loss_at, bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-3})
    log_t = float(best.x) if best.fun < before else 0.0  # never worse on val than no scaling
    after = loss_at(log_t)
    return {"temperature": round(float(np.exp(log_t)), 4), "val_loss_before": round(before, 6), "val_loss_after": round(after, 6)}


def _set(model, originals, factor: float) -> None:
    for dense, weights in zip(softmax_denses(model), originals):
        dense.set_weights([w * np.float32(factor) for w in weights])

"""The out-of-scope score: how far an image is from everything the model was trained on.

Three distances, each measured where it separates best on real out-of-scope
sets (docs/unknown.md; the maximum softmax probability separates clip art
from photos *worse than chance*):

- ``nearest``: 1 - cosine similarity of the image's average-pooled head-layer
  features to the nearest training image's (what the image shows);
- ``style_low`` / ``style_top``: Mahalanobis distance of the log channel
  statistics of the lower style layers / of the top style layer to the
  training images' (what the image looks like: photo texture, flat
  clip-art colour, a blank frame), with a Ledoit-Wolf shrunk covariance
  (tens of images, a thousand statistics).

Each is standardized by its mean and spread on the validation split and the
three are averaged: the score (higher = further out of scope). The threshold
is the ``keep`` quantile of the validation scores. The score never changes a
label; it only adds ``unknown``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COMPONENTS = ("nearest", "style_low", "style_top")
# References kept for the nearest-neighbour distance (a Dense layer of that
# many units in model.keras: 4096 x 512 floats = 8 MB); above, a seeded sample.
MAX_REFERENCES = 4096
RECORD = "unknown.json"
ARRAYS = "unknown.npz"


@dataclass(frozen=True)
class Detector:
    """A fitted out-of-scope score and its threshold.

    Attributes:
        references: ``(N, C)`` unit vectors of training images' pooled features.
        split_at: the statistics vector's index where the top style layer's begin.
        centers, kernels: per style group, the training mean and the matrix
            ``K`` with ``d = |(x - center) K|^2`` the Mahalanobis distance
            (standardization and the shrunk precision's Cholesky factor folded in).
        scale_mean, scale_sd: each component's mean and spread on val.
        threshold: score above which an image is ``unknown``.
        keep: the fraction of validation images the threshold keeps (the setting).
        record: what ``unknown.json`` holds beside the arrays (counts, val/test summaries).
    """

    references: np.ndarray
    split_at: int
    centers: tuple[np.ndarray, np.ndarray]
    kernels: tuple[np.ndarray, np.ndarray]
    scale_mean: np.ndarray
    scale_sd: np.ndarray
    threshold: float
    keep: float
    record: dict

    def components(self, pooled: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """``(n, 3)`` raw distances (``COMPONENTS`` order) of pooled features ``(n, C)`` and statistics ``(n, D)``."""
        unit = _unit(pooled.astype(np.float64))
        nearest = 1.0 - (unit @ self.references.T.astype(np.float64)).max(axis=1)
        parts = (stats[:, : self.split_at], stats[:, self.split_at:])
        mahalanobis = [np.square((x.astype(np.float64) - c) @ k).sum(axis=1) for x, c, k in zip(parts, self.centers, self.kernels)]
        return np.stack([nearest, *mahalanobis], axis=1)

    def scores(self, pooled: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """The out-of-scope score of each image (higher = further from the training images)."""
        return ((self.components(pooled, stats) - self.scale_mean) / self.scale_sd).mean(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pooled(maps: np.ndarray) -> np.ndarray:
    """Average-pooled features ``(n, C)`` of head-layer maps ``(n, h, w, C)``."""
    return maps.reshape(len(maps), -1, maps.shape[-1]).mean(axis=1)


def _mahalanobis_kernel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(center, K)`` with ``|(v - center) K|^2`` the Mahalanobis distance of
    ``v`` to ``x``'s rows under the Ledoit-Wolf shrunk covariance of the
    standardized statistics (what sklearn's ``LedoitWolf().mahalanobis`` gives).

    ``K`` is the symmetric square root of the shrunk precision, built from the
    SVD of the n x D data: the shrunk covariance is ``(1 - a) S + a mu I``, so
    its eigenvalues are ``(1 - a) s_i + a mu`` along the data's singular
    directions and ``a mu`` everywhere else -- no D x D inversion (1024^3 with
    tens of images: seconds; this: milliseconds)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a constant statistic (a dead channel) carries no distance
    z = (x - center) / scale
    n, d = z.shape
    alpha = float(ledoit_wolf_shrinkage(z, assume_centered=True))
    mu = float(np.square(z).sum() / (n * d))
    _, singular, directions = np.linalg.svd(z, full_matrices=False)
    elsewhere = max(alpha * mu, 1e-12)
    along = np.maximum((1 - alpha) * np.square(singular) / n + alpha * mu, 1e-12)
    root = np.eye(d) / np.sqrt(elsewhere) + (directions.T * (along ** -0.5 - elsewhere ** -0.5)) @ directions
    return center, root / scale[:, None]


def fit(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], keep: float, split_at: int,
        seed: int) -> Detector:
    """Fit the score on the training images and its threshold on the validation images.

    Args:
        train, val: ``(pooled features (n, C), channel statistics (n, D))`` of each split.
        keep: fraction of validation images the threshold keeps, in (0, 1].
        split_at: where the top style layer's statistics begin in a statistics row.
        seed: picks the references when there are more than :data:`MAX_REFERENCES`.

    Raises:
        ValueError: fewer than 2 validation images or 3 training images.
    """
    (p_train, s_train), (p_val, s_val) = train, val
    if len(p_val) < 2 or len(p_train) < 3:
        raise ValueError(f"need at least 3 training and 2 validation images, got {len(p_train)} and {len(p_val)}")
    references = _unit(p_train.astype(np.float64))
    sampled = len(references) > MAX_REFERENCES
    if sampled:
        references = references[np.sort(np.random.default_rng(seed).choice(len(references), MAX_REFERENCES, replace=False))]
    s_train = s_train.astype(np.float64)
    low, top = _mahalanobis_kernel(s_train[:, :split_at]), _mahalanobis_kernel(s_train[:, split_at:])
    draft = Detector(references.astype(np.float32), split_at, (low[0], top[0]), (low[1], top[1]), np.zeros(3), np.ones(3),
                     0.0, keep, {})
    raw = draft.components(p_val, s_val)
    mean, sd = raw.mean(axis=0), np.maximum(raw.std(axis=0), 1e-9)
    scored = Detector(draft.references, split_at, draft.centers, draft.kernels, mean, sd, 0.0, keep, {})
    val_scores = scored.scores(p_val, s_val)
    # "higher": at least `keep` of the validation images score at or below it.
    threshold = float(np.quantile(val_scores, keep, method="higher"))
    record = {"method": "mean of standardized " + ", ".join(COMPONENTS), "components": list(COMPONENTS), "keep": keep,
              "threshold": threshold, "references": int(len(references)),
              "references_sampled_from": int(len(p_train)) if sampled else None,
              "val_kept": float(np.mean(val_scores <= threshold)), "fitted_on": "train", "calibrated_on": "val"}
    return Detector(scored.references, split_at, scored.centers, scored.kernels, mean, sd, threshold, keep, record)


def summary(scores: np.ndarray, threshold: float) -> dict:
    """What the report and metrics record of one split's scores."""
    if not len(scores):
        return {"n": 0}
    q = np.quantile(scores, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return {"n": int(len(scores)), "kept": round(float(np.mean(scores <= threshold)), 6),
            "unknown": int(np.sum(scores > threshold)), "quantiles": [round(float(v), 6) for v in q]}


def save(detector: Detector, folder: Path, extra: dict | None = None) -> None:
    """``unknown.json`` (the record) and ``unknown.npz`` (the arrays) in ``folder``."""
    np.savez(folder / ARRAYS, references=detector.references, center_low=detector.centers[0], center_top=detector.centers[1],
             kernel_low=detector.kernels[0], kernel_top=detector.kernels[1], scale_mean=detector.scale_mean,
             scale_sd=detector.scale_sd)
    record = {**detector.record, "split_at": detector.split_at, **(extra or {})}
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def load(folder: Path) -> Detector | None:
    """The detector saved in ``folder``, or None when there is none."""
    if not (folder / RECORD).is_file():
        return None
    record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    with np.load(folder / ARRAYS) as a:
        return Detector(a["references"], int(record["split_at"]), (a["center_low"], a["center_top"]),
                        (a["kernel_low"], a["kernel_top"]), a["scale_mean"], a["scale_sd"], float(record["threshold"]),
                        float(record["keep"]), record)


def keras_score(detector: Detector, maps, stats):
    """The score as layers on Keras tensors: head-layer ``maps`` ``(n, h, w, C)`` and
    channel ``stats`` ``(n, 1, 1, D)`` -> ``(n,)``. Frozen Dense layers hold
    the constants (weights, not JSON in the model's config); the rest is
    Keras ops, which ``model.keras`` and every export carry."""
    import keras
    from keras import ops

    def frozen_dense(x, kernel, bias, name):
        layer = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None, trainable=False, name=name)
        y = layer(x)
        layer.set_weights([kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else []))
        return y

    unit = ops.normalize(ops.mean(maps, axis=(1, 2)), axis=-1, order=2)
    nearest = 1.0 - ops.max(frozen_dense(unit, detector.references.T, None, "unknown_references"), axis=-1)
    flat = ops.reshape(stats, (-1, stats.shape[-1]))
    parts = (flat[:, : detector.split_at], flat[:, detector.split_at:])
    distances = []
    for name, x, center, kernel in zip(("low", "top"), parts, detector.centers, detector.kernels):
        z = frozen_dense(x, kernel, -center @ kernel, f"unknown_style_{name}")
        distances.append(ops.sum(ops.square(z), axis=-1))
    raw = ops.stack([nearest, *distances], axis=-1)
    weights = (1.0 / (len(COMPONENTS) * detector.scale_sd))[:, None]
    score = frozen_dense(raw, weights, np.array([-(detector.scale_mean * weights[:, 0]).sum()]), "unknown_combine")
    return ops.reshape(score, (-1,))

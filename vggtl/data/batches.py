"""Decoding and classifying images in batches."""

from __future__ import annotations

import numpy as np

from vggtl.data.decode import UndecodableImage

def iter_probabilities(paths, decode, predict_fn, batch: int = 16):
    """Decode and classify images in batches (predict, classify, and train's
    check of the artifact on the test split).

    Args:
        paths: image files.
        decode: callable ``path -> (S, S, 3) uint8`` raising
            :class:`UndecodableImage`.
        predict_fn: callable mapping an ``(n, S, S, 3)`` uint8 batch to
            ``(n, n_classes)`` probabilities, or to ``(probabilities,
            unknown scores (n,))`` for a model that scores out-of-scope images.
        batch: images per forward pass.

    Yields:
        ``{"path", "image", "probs"}`` (+ ``"unknown_score"``) per decoded image, ``{"path", "error"}``
        per undecodable one, in input order within each batch.
    """
    for start in range(0, len(paths), batch):
        images, ok = [], []
        for path in paths[start : start + batch]:
            try:
                images.append(decode(path))
                ok.append(path)
            except UndecodableImage as exc:
                yield {"path": str(path), "error": str(exc)}
        if not ok:
            continue
        out = predict_fn(np.stack(images))
        probs, scores = out if isinstance(out, tuple) else (out, None)
        for i, (path, image, p) in enumerate(zip(ok, images, np.asarray(probs))):
            result = {"path": str(path), "image": image, "probs": p}
            if scores is not None:
                result["unknown_score"] = float(scores[i])
            yield result


def evenly_spaced(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced from the first (a deterministic sample)."""
    return items[:: max(1, len(items) // n)][:n]


"""Leakage audit: the same image, or nearly the same, in two splits.

Two kinds are listed in every report:

* identical files (same sha256) in different splits -- impossible with the
  split rule, which splits by content, but possible with a pre-split layout
  or a CSV;
* near-duplicates: pairs from different splits whose global-average-pooled
  cached features have a cosine similarity of at least ``audit.near_duplicate``
  (a resized, re-encoded, slightly cropped or recoloured copy).

A test image with a near-copy in train measures memory, not generalisation;
the audit says which files to move or remove. Computed on the cached
features in blocks, so it costs seconds and never holds a similarity
matrix of the whole store.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np

from vggtl.data import SPLITS
from vggtl.training.fit import pooled_features

SIMILARITY_CELLS = 1 << 24  # one block of the similarity matrix: at most 64 MB of float32
LISTED = 50  # pairs kept in metrics.json and the report (all are counted)


def identical_across_splits(files) -> list[dict]:
    """Groups of files with the same content lying in more than one split."""
    groups = defaultdict(list)
    for f in files:
        groups[f.sha256].append(f)
    found = []
    for sha, members in sorted(groups.items()):
        if len({f.split for f in members}) > 1:
            found.append({"sha256": sha, "files": [{"path": f.relpath, "split": f.split} for f in members]})
    return found


def pooled_unit_vectors(fs, rows) -> np.ndarray:
    """L2-normalised average-pooled clean features of ``rows``, read a batch of maps at a time."""
    pooled = pooled_features(fs, rows, "avg")
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def near_duplicates(fs, threshold: float) -> tuple[list[dict], int]:
    """Pairs from different splits with cosine >= ``threshold``, most similar
    first (at most :data:`LISTED`), and how many there are in all. Pairs of
    identical content are left to :func:`identical_across_splits`."""
    rows = {s: fs.split_rows(s) for s in SPLITS}
    vectors = {s: pooled_unit_vectors(fs, r) for s, r in rows.items() if len(r)}
    top, total = [], 0
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            if a in vectors and b in vectors:
                total += _pairs_between(fs, _Side(a, rows[a], vectors[a]), _Side(b, rows[b], vectors[b]), threshold, top)
    return top, total


class _Side(NamedTuple):
    """One split of a comparison: its name, store rows and unit feature vectors."""

    split: str
    rows: np.ndarray
    vectors: np.ndarray


def _pairs_between(fs, side_a: _Side, side_b: _Side, threshold: float, top: list) -> int:
    """Count the pairs of splits ``a`` x ``b`` at or above ``threshold``, keeping
    ``top`` the :data:`LISTED` most similar pairs seen so far (first found
    first among equals). Only the listed pairs become Python objects: a folder
    of video frames can have millions of near-duplicate pairs."""
    (a, rows_a, va), (b, rows_b, vb) = side_a, side_b
    count = 0
    block = max(1, SIMILARITY_CELLS // max(1, len(vb)))
    for start in range(0, len(va), block):
        sims = va[start : start + block] @ vb.T
        i, j = np.nonzero(sims >= threshold)
        ra, rb = rows_a[start + i], rows_b[j]
        other = fs.entries[ra] != fs.entries[rb]  # same content: one stored entry, left to identical_across_splits
        ra, rb, cosine = ra[other], rb[other], np.round(sims[i[other], j[other]].astype(np.float64), 4)
        count += len(ra)
        best = np.lexsort((np.arange(len(ra)), -cosine))[:LISTED]
        top += [{"a": str(fs.paths[ra[k]]), "a_split": a, "b": str(fs.paths[rb[k]]), "b_split": b, "cosine": float(cosine[k])}
                for k in best]
        top.sort(key=lambda p: -p["cosine"])
        del top[LISTED:]
    return count


def audit(fs, dataset, threshold: float) -> dict:
    """Both checks, as ``metrics.json`` holds them (``leakage``)."""
    pairs, total = near_duplicates(fs, threshold)
    return {"threshold": threshold, "identical": identical_across_splits(dataset.files),
            "near_duplicates": pairs, "near_duplicates_total": total}


def summary_line(leakage: dict) -> str:
    identical, near = len(leakage["identical"]), leakage["near_duplicates_total"]
    line = (f"leakage audit: {identical} file(s) with identical content in two splits, {near} near-duplicate pair(s) "
            f"across splits (cosine >= {leakage['threshold']:g})")
    return line + ("; see the report's 'Leakage audit'" if identical or near else "")

"""Integrity of feature stores and parts: a changed byte is an error, never a changed number.

Three checks cover every byte a number is computed from:

* every feature row (``features/<layer>``, one row per HDF5 chunk) has its own
  digest in ``checksums/<layer>`` (BLAKE2b, 8 bytes), compared with the row as
  read: this also catches a damaged chunk index, which makes HDF5 return
  another row or the fill value (zeros) without any error;
* each chunk also carries HDF5's Fletcher-32 checksum, verified by HDF5 on
  every read (a flipped bit fails the read itself);
* everything else (the attributes, ``entries/key``, ``index/*``,
  ``skipped/*``, the row digests, the features' dtypes, shapes and filters)
  is sealed by one SHA-256, the ``index_digest`` attribute, written last and
  checked when the file is opened.

:func:`damaged_rows` reads a layer block by block and names the rows that fail,
so extraction recomputes exactly those and training refuses to run on them.
Files written before the seal existed (vggtl 0.1.x) are reused by extraction,
which re-publishes them sealed; training asks for that.
"""

from __future__ import annotations

import hashlib

import h5py
import numpy as np

DIGEST_ATTR = "index_digest"
# What h5py raises on a damaged file, depending on which HDF5 structure a byte broke.
READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError)
SEALED = ("entries/key", "index/path", "index/label", "index/split", "index/entry",
          "skipped/sha256", "skipped/path", "skipped/reason")
VERIFY_BLOCK = 256  # rows read at once while verifying (bounded memory)


def index_digest(fh: h5py.File) -> str:
    """SHA-256 over the attributes (but the seal), the sealed datasets' values and
    the feature datasets' layout, in a fixed order."""
    h = hashlib.sha256(b"vggtl-store-index\n")
    for name in sorted(k for k in fh.attrs if k != DIGEST_ATTR):
        h.update(f"attr {name}={fh.attrs[name]}\n".encode())
    for name in [*SEALED, *(f"checksums/{layer}" for layer in sorted(fh["checksums"]))] if "checksums" in fh else SEALED:
        if name not in fh:
            continue
        dataset = fh[name]
        h.update(f"{name} {dataset.dtype} {dataset.shape}\n".encode())
        if h5py.check_string_dtype(dataset.dtype) and dataset.dtype.kind == "O":
            h.update("\0".join(dataset.asstr()[:]).encode())
        else:
            h.update(np.ascontiguousarray(dataset[:]).tobytes())
    for layer in sorted(fh["features"]) if "features" in fh else []:
        dataset = fh["features"][layer]
        h.update(f"features/{layer} {dataset.dtype} {dataset.shape} {dataset.chunks} {dataset.fletcher32}\n".encode())
    return h.hexdigest()


def seal(fh: h5py.File) -> None:
    """Write the seal of a file whose datasets and attributes are complete."""
    fh.attrs[DIGEST_ATTR] = index_digest(fh)


def is_sealed(fh: h5py.File) -> bool:
    try:
        return DIGEST_ATTR in fh.attrs
    except READ_ERRORS:  # attributes that cannot even be listed: treat as sealed, and failing
        return True


def seal_problem(fh: h5py.File) -> str | None:
    """Why the file's seal does not hold (its index or attributes changed), or None."""
    try:
        stored = fh.attrs.get(DIGEST_ATTR)
        if stored is None:
            return "it has no integrity seal (written by an older vggtl)"
        actual = index_digest(fh)
    except READ_ERRORS as exc:
        return f"its index cannot be read ({exc})"
    if actual != stored:
        return "its index or attributes do not match their checksum (the file was altered or the disk is failing)"
    return None


def row_digests(rows: np.ndarray) -> np.ndarray:
    """The 8-byte BLAKE2b digest of each row's bytes, as uint64."""
    rows = np.ascontiguousarray(rows)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in rows],
                    dtype=np.uint64)


def write_row_digests(fh: h5py.File, layer: str, digests: np.ndarray) -> None:
    fh.create_dataset(f"checksums/{layer}", data=np.asarray(digests, dtype=np.uint64))


def damaged_rows(fh: h5py.File, layer: str, on_sound_block=None) -> list[int]:
    """Rows of ``features/<layer>`` that differ from their digest, fail their
    chunk's checksum or cannot be read, reading ``VERIFY_BLOCK`` rows at a time.

    ``on_sound_block(start, block)``, when given, receives each block whose
    every row matched its digest (a reader keeps them: the file is read once)."""
    dataset = fh[f"features/{layer}"]
    expected = fh[f"checksums/{layer}"][:] if f"checksums/{layer}" in fh else np.zeros(0, np.uint64)
    if len(expected) != dataset.shape[0]:
        return list(range(dataset.shape[0]))
    bad = []
    for start in range(0, dataset.shape[0], VERIFY_BLOCK):
        stop = min(start + VERIFY_BLOCK, dataset.shape[0])
        try:
            block = dataset[start:stop]
        except READ_ERRORS:
            bad += [row for row in range(start, stop) if not _row_ok(dataset, row, expected[row])]
            continue
        failing = np.flatnonzero(row_digests(block) != expected[start:stop])
        if on_sound_block is not None and not len(failing):
            on_sound_block(start, block)
        bad += (start + failing).tolist()
    return bad


def _row_ok(dataset: h5py.Dataset, row: int, digest) -> bool:
    try:
        return row_digests(dataset[row : row + 1])[0] == digest
    except READ_ERRORS:
        return False

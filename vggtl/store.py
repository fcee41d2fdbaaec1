"""The HDF5 feature store: cached backbone activations keyed by image content.

One file per (dataset name, backbone setting)::

    <cache.path>/<name>-<settings_key[:12]>.h5
      attrs     schema_version, vggtl_version, settings (JSON), settings_key,
                class_names (JSON), data_digest, config (YAML), layer,
                feature_shape, created_utc
      entries/sha256    (N,)     S64    content hash of each distinct image
      entries/features  (N,...)  f16/32 activations, one image per chunk
      index/path        (M,)     str    file path relative to data.root
      index/label       (M,)     i4
      index/split       (M,)     i1     0 train, 1 val, 2 test
      index/entry       (M,)     i8     row in entries/
      skipped/path, skipped/sha256, skipped/reason    undecodable files

Crash safety. The store file itself is only ever replaced atomically
(written to a temporary file, fsynced, ``os.replace``d). While extraction
runs, finished images are appended as small *part* files in
``<store>.parts/``, each also written to a temporary name and renamed when
complete, so a ``kill -9`` at any moment loses at most the part in flight.
The next run trusts only complete parts and the last complete store, and a
lock file keeps two extractions off the same store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

import vggtl
from vggtl.data import SPLIT_CODES, SPLITS, Dataset
from vggtl.errors import StoreError

SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_COPY_ROWS = 256
READ_BLOCK = 256


# --------------------------------------------------------------------------- naming


def settings_key(settings: dict) -> str:
    """Digest of everything that changes feature values (weights, layer, size...)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def store_path(cache_dir, name: str, settings: dict) -> Path:
    return Path(cache_dir) / f"{name}-{settings_key(settings)[:12]}.h5"


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


# --------------------------------------------------------------------------- locking


@contextmanager
def locked(path: Path):
    """Exclusive lock for writers of ``path``; refuses at once if another holds it.

    ``flock`` locks vanish with their process, so a killed extraction never
    leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StoreError(
                f"feature store {path} is being written by another extract (pid {holder}); "
                "wait for it to finish, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- atomic files


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_h5(path: Path):
    """Open a temporary HDF5 file next to ``path``; call ``commit()`` to publish it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fh = h5py.File(tmp, "w")

    def commit():
        fh.close()
        _fsync_path(tmp)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort():
        try:
            fh.close()
        finally:
            tmp.unlink(missing_ok=True)

    return fh, commit, abort


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed writer left behind (call under the lock)."""
    stale = list(path.parent.glob(f".{path.name}.tmp-*"))
    if parts_dir(path).is_dir():
        stale += parts_dir(path).glob(".part-*.tmp-*")
    for tmp in stale:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- cached state


@dataclass
class CachedState:
    """What a previous run left: features and skip reasons by content hash.

    ``sources`` maps sha256 -> (file, row) for features found in the store
    or in complete part files. ``store_skip_ok`` says the store's skip
    reasons were made with the current skip settings (so it can be up to date).
    """

    sources: dict[str, tuple[Path, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    store_ok: bool = False
    store_skip_ok: bool = False
    store_data_digest: str | None = None
    notes: list[str] = field(default_factory=list)


def _read_entries(fh, file_path: Path, state: CachedState, skip_ok: bool) -> None:
    shas = fh["entries/sha256"][:]
    for row, sha in enumerate(shas):
        state.sources.setdefault(sha.decode(), (file_path, row))
    if skip_ok and "skipped" in fh:
        for sha, reason in zip(fh["skipped/sha256"][:], fh["skipped/reason"].asstr()[:]):
            state.skipped.setdefault(sha.decode(), reason)


def _quarantine(path: Path, store: Path, why: str, state: CachedState) -> None:
    """Move an unusable store or part beside the store, out of the parts folder
    (which is deleted after a successful run), under a unique name."""
    bad = store.parent / f"{path.name}.invalid-{time.time_ns()}"
    os.replace(path, bad)
    state.notes.append(f"{path.name} was unusable ({why}); moved aside to {bad} and recomputing")


def load_state(path: Path, settings: dict, skip_settings: dict) -> CachedState:
    """Collect cached features/skips from the store and complete part files.

    Files whose settings differ from ``settings`` are never used: a part or
    store built with other weights/layer/size is moved aside, not mixed in.
    Skip reasons are reused only when ``skip_settings`` (e.g. the pixel limit)
    match, so raising ``data.max_pixels`` retries the files it skipped.
    """
    state = CachedState()
    key = settings_key(settings)
    candidates = ([path] if path.exists() else []) + sorted(parts_dir(path).glob("part-*.h5"))
    for file_path in candidates:
        # Read each file into its own state and merge only once it was read
        # whole: a file that fails half-way is quarantined, and no source may
        # keep pointing at its old (renamed) path.
        found = CachedState()
        try:
            with h5py.File(file_path, "r") as fh:
                other_settings = fh.attrs.get("settings_key") != key
                if not other_settings:
                    skip_ok = json.loads(fh.attrs.get("skip_settings", "{}")) == skip_settings
                    _read_entries(fh, file_path, found, skip_ok)
                    if file_path == path:
                        found.store_ok = True
                        found.store_skip_ok = skip_ok
                        found.store_data_digest = fh.attrs.get("data_digest")
        except (OSError, KeyError, ValueError) as exc:
            _quarantine(file_path, path, f"cannot be read: {exc}", state)
            continue
        if other_settings:
            _quarantine(file_path, path, "built with other backbone settings", state)
            continue
        for sha, source in found.sources.items():
            state.sources.setdefault(sha, source)
        for sha, reason in found.skipped.items():
            state.skipped.setdefault(sha, reason)
        if file_path == path:
            state.store_ok, state.store_skip_ok = found.store_ok, found.store_skip_ok
            state.store_data_digest = found.store_data_digest
    return state


# --------------------------------------------------------------------------- writing


class PartWriter:
    """Buffers newly computed features and publishes them as atomic part files.

    A part is published every ``rows_per_part`` images or every
    ``seconds_per_part`` seconds, whichever comes first, so a killed run loses
    at most a few seconds of convolutions (at ~5 images/s on a 2-core CPU,
    256 images would be 50 s).
    """

    def __init__(
        self,
        path: Path,
        settings: dict,
        skip_settings: dict,
        shape,
        dtype: str,
        rows_per_part: int = 256,
        seconds_per_part: float = 5.0,
    ):
        self.dir = parts_dir(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings_key = settings_key(settings)
        self.skip_settings = json.dumps(skip_settings, sort_keys=True)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self._last_flush = time.monotonic()
        self._shas: list[str] = []
        self._feats: list[np.ndarray] = []
        self._skipped: list[tuple[str, str, str]] = []
        self.written: dict[str, tuple[Path, int]] = {}
        self.skipped_reasons: dict[str, str] = {}
        self.computed = 0

    def add(self, shas, features) -> None:
        self._shas.extend(shas)
        self._feats.append(np.asarray(features, dtype=self.dtype))
        self.computed += len(shas)
        if len(self._shas) >= self.rows_per_part or time.monotonic() - self._last_flush >= self.seconds_per_part:
            self.flush()

    def add_skipped(self, sha: str, relpath: str, reason: str) -> None:
        self._skipped.append((sha, relpath, reason))
        self.skipped_reasons[sha] = reason

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._shas and not self._skipped:
            return
        target = self.dir / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.h5"
        fh, commit, abort = _atomic_h5(target)
        try:
            fh.attrs["settings_key"] = self.settings_key
            fh.attrs["skip_settings"] = self.skip_settings
            feats = np.concatenate(self._feats) if self._feats else np.zeros((0, *self.shape), self.dtype)
            fh.create_dataset("entries/sha256", data=np.array(self._shas, dtype="S64").reshape(-1))
            fh.create_dataset("entries/features", data=feats)
            _write_skipped(fh, self._skipped)
            commit()
        except BaseException:
            abort()
            raise
        for row, sha in enumerate(self._shas):
            self.written[sha] = (target, row)
        self._shas, self._feats, self._skipped = [], [], []


def _write_skipped(fh, skipped: list[tuple[str, str, str]]) -> None:
    shas = [s for s, _, _ in skipped]
    fh.create_dataset("skipped/sha256", data=np.array(shas, dtype="S64").reshape(-1))
    fh.create_dataset("skipped/path", data=[p for _, p, _ in skipped], dtype=_STR)
    fh.create_dataset("skipped/reason", data=[r for _, _, r in skipped], dtype=_STR)


def write_store(
    path: Path,
    dataset: Dataset,
    sources: dict[str, tuple[Path, int]],
    skipped: dict[str, str],
    attrs: dict,
    shape,
    dtype: str,
    compression: str | None,
) -> dict:
    """Write the complete store for ``dataset`` atomically; return its summary.

    Features are copied from ``sources`` (old store and part files) in
    bounded chunks, so memory does not grow with the dataset.
    """
    good = [f for f in dataset.files if f.sha256 in sources]
    bad = [f for f in dataset.files if f.sha256 not in sources]
    missing = [f.relpath for f in bad if f.sha256 not in skipped]
    if missing:
        raise StoreError(f"internal: no features nor skip reason for {missing[:3]}")
    unique = list(dict.fromkeys(f.sha256 for f in good))
    row_of = {sha: i for i, sha in enumerate(unique)}
    fh, commit, abort = _atomic_h5(path)
    try:
        for k, v in attrs.items():
            fh.attrs[k] = v
        fh.attrs["schema_version"] = SCHEMA_VERSION
        fh.attrs["vggtl_version"] = vggtl.__version__
        fh.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        fh.attrs["feature_shape"] = json.dumps(list(shape))
        fh.create_dataset("entries/sha256", data=np.array(unique, dtype="S64").reshape(-1))
        out = fh.create_dataset(
            "entries/features",
            shape=(len(unique), *shape),
            dtype=dtype,
            chunks=(1, *shape) if unique else None,
            compression=compression,
        )
        _copy_features(out, unique, sources)
        fh.create_dataset("index/path", data=[f.relpath for f in good], dtype=_STR)
        fh.create_dataset("index/label", data=np.array([f.label for f in good], dtype="i4"))
        fh.create_dataset("index/split", data=np.array([SPLIT_CODES[f.split] for f in good], dtype="i1"))
        fh.create_dataset("index/entry", data=np.array([row_of[f.sha256] for f in good], dtype="i8"))
        _write_skipped(fh, [(f.sha256, f.relpath, skipped[f.sha256]) for f in bad])
        commit()
    except BaseException:
        abort()
        raise
    return {"images": len(good), "distinct": len(unique), "skipped": len(bad)}


def _copy_features(out, unique: list[str], sources: dict[str, tuple[Path, int]]) -> None:
    """Fill ``out`` row by row from the source files, reading in sorted runs."""
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for dst, sha in enumerate(unique):
        src_file, src_row = sources[sha]
        by_file.setdefault(src_file, []).append((src_row, dst))
    for src_file, pairs in by_file.items():
        pairs.sort()
        with h5py.File(src_file, "r") as src:
            feats = src["entries/features"]
            for start in range(0, len(pairs), _COPY_ROWS):
                chunk = pairs[start : start + _COPY_ROWS]
                src_rows = [s for s, _ in chunk]
                first, last = src_rows[0], src_rows[-1]
                if last - first < 2 * len(chunk):
                    # Dense run: one contiguous read is fastest.
                    block, at = feats[first : last + 1], [s - first for s in src_rows]
                else:
                    # Sparse rows (e.g. most images removed since the old store
                    # was written): a contiguous read could span the whole
                    # file, so read just these rows (sorted and unique, as
                    # h5py requires) and keep memory bounded by _COPY_ROWS.
                    block, at = feats[src_rows], range(len(chunk))
                for row, (_, dst) in zip(at, chunk):
                    out[dst] = block[row]


def clear_parts(path: Path) -> None:
    """Delete the part files once their features are in the published store."""
    folder = parts_dir(path)
    if folder.is_dir():
        for part in folder.glob("part-*.h5"):
            part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # keep anything we did not create
            folder.rmdir()


# --------------------------------------------------------------------------- reading


class FeatureStore:
    """Read-only access to a complete store; features are streamed, not preloaded.

    Args:
        path: the ``.h5`` store file.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"feature store {self.path} does not exist; run python -m vggtl.extract CONFIG first")
        try:
            self._fh = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"feature store {self.path} cannot be opened ({exc}); delete it and re-run extract") from None
        attrs = self._fh.attrs
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"feature store {self.path} has schema {attrs.get('schema_version')}, this vggtl reads {SCHEMA_VERSION}; re-run extract"
            )
        self.class_names: list[str] = json.loads(attrs["class_names"])
        self.settings: dict = json.loads(attrs["settings"])
        self.data_digest: str = attrs["data_digest"]
        self.config_yaml: str = attrs["config"]
        self.feature_shape = tuple(json.loads(attrs["feature_shape"]))
        self.paths = np.array(self._fh["index/path"].asstr()[:], dtype=object)
        self.labels = self._fh["index/label"][:]
        self.splits = self._fh["index/split"][:]
        self.entries = self._fh["index/entry"][:]
        self.skipped = list(
            zip(self._fh["skipped/path"].asstr()[:], self._fh["skipped/reason"].asstr()[:])
        )

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def split_rows(self, split: str) -> np.ndarray:
        """Index rows (into paths/labels) belonging to ``split``."""
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.splits == SPLIT_CODES[split])

    def features(self, rows) -> np.ndarray:
        """float32 features of the given index rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        unique, inverse = np.unique(self.entries[rows], return_inverse=True)
        return self._read_entries(unique)[inverse].astype(np.float32)

    def _read_entries(self, unique: np.ndarray) -> np.ndarray:
        """Rows ``unique`` (sorted) of entries/features, read block by block.

        h5py's fancy indexing costs ~2 ms per row; reading whole blocks of
        READ_BLOCK contiguous rows and picking from them is ~40x faster and
        keeps memory bounded by one block.
        """
        dataset = self._fh["entries/features"]
        out = np.empty((len(unique), *self.feature_shape), dtype=dataset.dtype)
        blocks = unique // READ_BLOCK
        for block in np.unique(blocks):
            lo, hi = np.searchsorted(blocks, block, "left"), np.searchsorted(blocks, block, "right")
            start = int(block) * READ_BLOCK
            chunk = dataset[start : min(start + READ_BLOCK, dataset.shape[0])]
            out[lo:hi] = chunk[unique[lo:hi] - start]
        return out

    def iter_batches(self, rows, batch_size: int = 256):
        """Yield ``(rows_chunk, features_chunk)`` so callers never hold all features."""
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield chunk, self.features(chunk)

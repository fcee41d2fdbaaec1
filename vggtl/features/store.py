"""The HDF5 feature store: cached backbone activations keyed by image content.

One file per (dataset name, backbone setting)::

    <cache.path>/<name>-<settings_key[:12]>.h5
      attrs     schema_version, vggtl_version, settings (JSON), settings_key,
                class_names (JSON), data_digest, config (YAML), layers (JSON),
                feature_shapes (JSON), augment (JSON), created_utc
      entries/key       (N,)     str    content sha256 of each distinct image, or
                                        "<sha256>:<augment digest>:<view>" for an
                                        augmented view of a training image
      features/<layer>  (N,...)  f16/32 activations of each stored layer, one
                                        entry per chunk (rows match entries/key)
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

SCHEMA_VERSION = 2
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

    ``sources`` maps entry key (content sha256, or a view key) -> (file, row)
    for features found in the store or in complete part files;
    ``store_keys`` are the keys of the published store alone. ``store_skip_ok`` says the store's skip
    reasons were made with the current skip settings (so it can be up to date).
    """

    sources: dict[str, tuple[Path, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    store_ok: bool = False
    store_skip_ok: bool = False
    store_data_digest: str | None = None
    store_keys: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _read_entries(fh, file_path: Path, state: CachedState, skip_ok: bool) -> None:
    for row, key in enumerate(fh["entries/key"].asstr()[:]):
        state.sources.setdefault(key, (file_path, row))
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
                        found.store_keys = set(found.sources)
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
            state.store_keys = found.store_keys
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
        shapes: dict[str, tuple],
        dtype: str,
        rows_per_part: int = 256,
        seconds_per_part: float = 5.0,
    ):
        self.dir = parts_dir(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings_key = settings_key(settings)
        self.skip_settings = json.dumps(skip_settings, sort_keys=True)
        self.shapes = {layer: tuple(shape) for layer, shape in shapes.items()}
        self.dtype = np.dtype(dtype)
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self._last_flush = time.monotonic()
        self._keys: list[str] = []
        self._feats: dict[str, list[np.ndarray]] = {layer: [] for layer in self.shapes}
        self._skipped: list[tuple[str, str, str]] = []
        self.written: dict[str, tuple[Path, int]] = {}
        self.skipped_reasons: dict[str, str] = {}
        self.computed = 0

    def add(self, keys, features: dict) -> None:
        """Buffer ``features[layer]`` (one row per key) for every stored layer."""
        self._keys.extend(keys)
        for layer in self.shapes:
            self._feats[layer].append(np.asarray(features[layer], dtype=self.dtype))
        self.computed += len(keys)
        if len(self._keys) >= self.rows_per_part or time.monotonic() - self._last_flush >= self.seconds_per_part:
            self.flush()

    def add_skipped(self, sha: str, relpath: str, reason: str) -> None:
        self._skipped.append((sha, relpath, reason))
        self.skipped_reasons[sha] = reason

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._keys and not self._skipped:
            return
        target = self.dir / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.h5"
        fh, commit, abort = _atomic_h5(target)
        try:
            fh.attrs["settings_key"] = self.settings_key
            fh.attrs["skip_settings"] = self.skip_settings
            fh.create_dataset("entries/key", data=self._keys, dtype=_STR, shape=(len(self._keys),))
            for layer, shape in self.shapes.items():
                chunks = self._feats[layer]
                feats = np.concatenate(chunks) if chunks else np.zeros((0, *shape), self.dtype)
                fh.create_dataset(f"features/{layer}", data=feats)
            _write_skipped(fh, self._skipped)
            commit()
        except BaseException:
            abort()
            raise
        for row, key in enumerate(self._keys):
            self.written[key] = (target, row)
        self._keys, self._skipped = [], []
        self._feats = {layer: [] for layer in self.shapes}


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
    shapes: dict[str, tuple],
    dtype: str,
    compression: str | None,
    view_keys=(),
) -> dict:
    """Write the complete store for ``dataset`` atomically; return its summary.

    Args:
        view_keys: keys of the augmented views to keep (those of skipped
            images are left out); every other view in ``sources`` drops out.

    Features are copied from ``sources`` (old store and part files) in
    bounded chunks, so memory does not grow with the dataset.
    """
    good = [f for f in dataset.files if f.sha256 in sources]
    bad = [f for f in dataset.files if f.sha256 not in sources]
    missing = [f.relpath for f in bad if f.sha256 not in skipped]
    missing += [k for k in view_keys if k.split(":", 1)[0] in sources and k not in sources]
    if missing:
        raise StoreError(f"internal: no features nor skip reason for {missing[:3]}")
    unique = list(dict.fromkeys(f.sha256 for f in good))
    unique += [k for k in view_keys if k in sources]
    row_of = {key: i for i, key in enumerate(unique)}
    fh, commit, abort = _atomic_h5(path)
    try:
        for k, v in attrs.items():
            fh.attrs[k] = v
        fh.attrs["schema_version"] = SCHEMA_VERSION
        fh.attrs["vggtl_version"] = vggtl.__version__
        fh.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        fh.attrs["layers"] = json.dumps(list(shapes))
        fh.attrs["feature_shapes"] = json.dumps({layer: list(shape) for layer, shape in shapes.items()})
        fh.create_dataset("entries/key", data=unique, dtype=_STR, shape=(len(unique),))
        for layer, shape in shapes.items():
            out = fh.create_dataset(
                f"features/{layer}",
                shape=(len(unique), *shape),
                dtype=dtype,
                chunks=(1, *shape) if unique else None,
                compression=compression,
            )
            _copy_features(out, layer, unique, sources)
        fh.create_dataset("index/path", data=[f.relpath for f in good], dtype=_STR)
        fh.create_dataset("index/label", data=np.array([f.label for f in good], dtype="i4"))
        fh.create_dataset("index/split", data=np.array([SPLIT_CODES[f.split] for f in good], dtype="i1"))
        fh.create_dataset("index/entry", data=np.array([row_of[f.sha256] for f in good], dtype="i8"))
        _write_skipped(fh, [(f.sha256, f.relpath, skipped[f.sha256]) for f in bad])
        commit()
    except BaseException:
        abort()
        raise
    return {"images": len(good), "entries": len(unique), "skipped": len(bad)}


def _copy_features(out, layer: str, unique: list[str], sources: dict[str, tuple[Path, int]]) -> None:
    """Fill ``out`` (one layer) row by row from the source files, reading in sorted runs."""
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for dst, sha in enumerate(unique):
        src_file, src_row = sources[sha]
        by_file.setdefault(src_file, []).append((src_row, dst))
    for src_file, pairs in by_file.items():
        pairs.sort()
        with h5py.File(src_file, "r") as src:
            feats = src[f"features/{layer}"]
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

    Attributes:
        layers: stored layers; ``layers[0]`` is the head's input
            (``backbone.layer``) and the default of every reader.
        paths, labels, splits, entries: the per-file index (``entries`` are
            rows of the clean features).
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
        self.layers: list[str] = json.loads(attrs["layers"])
        self.feature_shapes = {layer: tuple(shape) for layer, shape in json.loads(attrs["feature_shapes"]).items()}
        self.feature_shape = self.feature_shapes[self.layers[0]]
        self.augment: dict = json.loads(attrs.get("augment", "{}"))
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

    def features(self, rows, layer: str | None = None, dtype="float32") -> np.ndarray:
        """Clean features of the given index rows, in the order given."""
        return self.entry_features(self.entries[np.asarray(rows, dtype=np.int64)], layer, dtype)

    def entry_rows(self, keys) -> np.ndarray:
        """Entry rows of the given keys (e.g. view keys); StoreError names a missing one."""
        if not hasattr(self, "_row_of_key"):
            self._row_of_key = {k: i for i, k in enumerate(self._fh["entries/key"].asstr()[:])}
        try:
            return np.array([self._row_of_key[k] for k in keys], dtype=np.int64)
        except KeyError as exc:
            raise StoreError(f"feature store {self.path} has no entry {exc.args[0]!r}; re-run extract") from None

    def clean_keys(self, rows) -> list[str]:
        """Content hashes (clean entry keys) of the given index rows."""
        if not hasattr(self, "_keys"):
            self._keys = self._fh["entries/key"].asstr()[:]
        return [self._keys[e] for e in self.entries[np.asarray(rows, dtype=np.int64)]]

    def entry_features(self, entries, layer: str | None = None, dtype="float32") -> np.ndarray:
        """Features of the given entry rows (any order, repeats allowed) for ``layer``."""
        layer = layer or self.layers[0]
        if layer not in self.feature_shapes:
            raise StoreError(f"feature store {self.path} holds {self.layers}, not {layer!r}; re-run extract with this config")
        unique, inverse = np.unique(np.asarray(entries, dtype=np.int64), return_inverse=True)
        return self._read_entries(unique, layer)[inverse].astype(dtype, copy=False)

    def _read_entries(self, unique: np.ndarray, layer: str) -> np.ndarray:
        """Rows ``unique`` (sorted) of features/<layer>, read block by block.

        h5py's fancy indexing costs ~2 ms per row; reading whole blocks of
        READ_BLOCK contiguous rows and picking from them is ~40x faster and
        keeps memory bounded by one block.
        """
        dataset = self._fh[f"features/{layer}"]
        out = np.empty((len(unique), *self.feature_shapes[layer]), dtype=dataset.dtype)
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

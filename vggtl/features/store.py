"""The HDF5 feature store: cached backbone activations keyed by image content.

One file per (dataset name, backbone setting)::

    <cache.path>/<name>-<settings_key[:12]>.h5
      attrs     schema_version, vggtl_version, settings (JSON), settings_key,
                class_names (JSON), content_digest (classes, paths, labels,
                contents: what the store must match), data_digest and
                split_digest (the split at extraction, for the record: train
                splits again from its own config), config (YAML), layers
                (JSON), feature_shapes (JSON), augment (JSON), created_utc
      entries/key       (N,)     str    content sha256 of each distinct image, or
                                        "<sha256>:<augment digest>:<view>" for an
                                        augmented view of a training image
      features/<layer>  (N,...)  f16/32 activations of each stored layer, one
                                        entry per chunk (rows match entries/key)
      index/path        (M,)     str    file path relative to data.root
      index/label       (M,)     i4
      index/split       (M,)     i1     0 train, 1 val, 2 test (at extraction)
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

import collections
import contextlib
import functools
import hashlib
import json
import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import filelock
import h5py
import numpy as np

import vggtl
from vggtl.backbones.spec import Spec
from vggtl.data import SPLIT_CODES, SPLITS, Dataset
from vggtl.errors import StoreError, invocation, path_error
from vggtl.features import integrity

SCHEMA_VERSION = 2
_STR = h5py.string_dtype("utf-8")
_COPY_ROWS = 256
READ_BLOCK = integrity.VERIFY_BLOCK  # equal: the blocks verify() reads are the blocks readers ask for
# Blocks of features an open store keeps in RAM once read (verified), least
# recently used dropped first: one training run reads the same features ~10
# times (verification, phase 1, each split's predictions, the probe, the
# unknown detector, the leakage audit). clipart8's 429 VGG16 maps are 21 MB;
# a store above the budget is streamed as before, bounded by it.
BLOCK_CACHE_BYTES = 512 * 2**20


# --------------------------------------------------------------------------- what a store holds


@dataclass(frozen=True)
class StoreFormat:
    """What one store holds and how; built once per run by :func:`store_format`.

    Attributes:
        settings: everything that changes stored feature values (backbone,
            layers, weights digest, size, resize, background, preprocessing,
            dtype, schema); its digest names the file.
        skip_settings: what decides that a file is skipped (the pixel limit);
            changing it retries skipped files.
        shapes: ``{layer: activation shape}``, the head's input layer first.
        dtype: stored precision (``cache.dtype``).
        compression: HDF5 chunk compression (``cache.compression``).
        augment: ``{"views": n, "digest": settings digest}`` of the stored
            augmented views.
    """

    settings: dict
    skip_settings: dict
    shapes: dict[str, tuple]
    dtype: str
    compression: str | None
    augment: dict

    @property
    def key(self) -> str:
        return settings_key(self.settings)


def store_format(spec: Spec, weights_digest: str, cache, augment: dict, runtime: str = "tensorflow",
                 precision: str = "fp32", calibration: str | None = None) -> StoreFormat:
    """The :class:`StoreFormat` of a run.

    Args:
        spec: the resolved backbone (``cfg.spec``), its decoding (size,
            resize, background, ``data.max_pixels``) included.
        weights_digest: digest of the weights actually loaded.
        cache: the ``cache`` config section (dtype, compression).
        augment: :func:`augment_attr` of the run's ``augment.*``.
        runtime: ``extract.runtime``; part of the settings (features of two
            runtimes never mix) except for the default, ``tensorflow``, so
            stores written before runtimes existed keep their digest.
        precision, calibration: ``extract.precision`` and, for int8, the
            digest of the calibration images (another set, other features).
    """
    settings = {
        "backbone": spec.name,
        "layers": list(spec.stored_layers),
        "weights_digest": weights_digest,
        "image_size": spec.image_size,
        "resize": spec.decode.resize,
        "background": list(spec.decode.background),
        "preprocessing": spec.arch.preprocessing_description,
        "dtype": cache.dtype,
        "schema_version": SCHEMA_VERSION,
    }
    if spec.mirror_average:  # only when on, so that other stores keep their digest
        settings["mirror_average"] = True
    if spec.arch.width != 1.0:  # likewise
        settings["width"] = spec.arch.width
    if runtime != "tensorflow":
        settings["runtime"] = f"{runtime}-{precision}"
    if precision == "int8":
        settings["calibration"] = calibration
    return StoreFormat(settings, {"max_pixels": spec.decode.max_pixels}, spec.feature_shapes, cache.dtype, cache.compression, augment)


def augment_attr(views: int, digest: str) -> dict:
    """The store's record of its augmented views (``augment`` attribute)."""
    return {"views": views, "digest": digest}


def settings_key(settings: dict) -> str:
    """Digest of everything that changes feature values (weights, layer, size...)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def store_path(cache_dir, name: str, settings: dict) -> Path:
    return Path(cache_dir) / f"{name}-{settings_key(settings)[:12]}.h5"


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


# --------------------------------------------------------------------------- entry keys


def view_key(sha256: str, augment_digest: str, view: int) -> str:
    """Key of one augmented view; clean features are keyed by the content hash alone."""
    return f"{sha256}:{augment_digest}:{view}"


def content_hash(key: str) -> str:
    """The image a key belongs to (a clean key is its own content hash)."""
    return key.split(":", 1)[0]


def view_index(key: str) -> int:
    """The view number of a view key (1, 2, ...)."""
    return int(key.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- locking


def lock_files(path: Path) -> tuple[Path, Path]:
    """The lock file of the store at ``path`` and the side file naming its holder.

    Hidden, empty, one per store: the lock file is not deleted on release
    (deleting a flock'ed file lets two writers lock two different files).
    """
    return path.with_name(f".{path.name}.lock"), path.with_name(f".{path.name}.lock.pid")


@contextmanager
def locked(path: Path):
    """Exclusive lock for writers of ``path``; refuses at once if another holds it.

    The lock (``filelock``: ``flock`` on POSIX, ``msvcrt`` on Windows)
    vanishes with its process, so a killed extraction never leaves a stale
    lock behind. The holder's pid is kept in a side file for the message.
    """
    lock_path, owner = lock_files(path)
    lock = filelock.FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StoreError(
            f"feature store {path} is being written by another extract (pid {_read_owner(owner)}); "
            "wait for it to finish, then run again"
        ) from None
    except OSError as exc:
        raise path_error(exc, lock_path, "lock the feature store") from None
    try:
        with contextlib.suppress(OSError):  # only the message needs it
            owner.write_text(str(os.getpid()))
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()


def being_written(path: Path) -> str | None:
    """Why the store at ``path`` cannot be read as final now: an extract holds
    its lock ("being written by another extract (pid N)..."), else None."""
    if not lock_files(path)[0].exists():
        return None
    try:
        with locked(path):
            return None
    except StoreError as exc:
        return str(exc)


def _read_owner(owner: Path) -> str:
    try:
        return owner.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------- atomic files


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LatchingFile:
    """The file object HDF5 writes a store or part through (h5py's ``fileobj``
    driver), which never lets a write error reach HDF5.

    HDF5 cannot recover from a failed write (disk full, file-size limit): its
    objects stay half-flushed and the process crashes when they are freed. So
    the first OSError is latched here, HDF5 is told every write succeeded
    (later writes are dropped, reads past what reached the disk give zeros),
    and :func:`_published_h5` raises the latched error after HDF5 has closed
    cleanly -- and deletes the file, which was never renamed into place.
    """

    def __init__(self, path: Path):
        # Unbuffered: HDF5 aggregates its own writes, and a buffered file would
        # raise a deferred write error from seek() or tell().
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by _published_h5
        self.error: OSError | None = None

    def _guard(self, op, *args, default=None):
        if self.error is None:
            try:
                return op(*args)
            except OSError as exc:
                self.error = exc
        return default

    def seek(self, offset, whence=os.SEEK_SET):
        return self._file.seek(offset, whence)

    def tell(self):
        return self._file.tell()

    def write(self, data):
        self._guard(self._file.write, data)
        return len(data)

    def read(self, size=-1):
        return self._guard(self._file.read, size, default=b"") or b""

    def readinto(self, buffer):
        got = self._guard(self._file.readinto, buffer, default=0) or 0
        memoryview(buffer)[got:] = bytes(len(buffer) - got)
        return len(buffer)

    def truncate(self, size=None):
        self._guard(self._file.truncate, size)
        return size

    def flush(self):
        self._guard(self._file.flush)

    def close(self):
        """Fsync and close the real file (once); the latched error, if any, stays."""
        if not self._file.closed:
            self._guard(os.fsync, self._file.fileno())
            self._file.close()


@contextmanager
def _published_h5(path: Path, what: str):
    """Yield an HDF5 file open under a temporary name next to ``path``. When the
    block ends normally the file is closed, fsynced and renamed onto ``path``
    (atomic: readers see the old file or the whole new one); on any error it
    is deleted, and an OSError (disk full, read-only directory...) becomes a
    PathError naming ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    raw = None
    try:
        raw = _LatchingFile(tmp)
        with h5py.File(raw, "w") as fh:
            yield fh
        raw.close()
        if raw.error is not None:
            raise raw.error
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except OSError as exc:
        _discard(raw, tmp)
        raise path_error(exc, path, f"write the {what}") from None
    except BaseException:
        _discard(raw, tmp)
        raise


def _discard(raw: _LatchingFile | None, tmp: Path) -> None:
    if raw is not None:
        with contextlib.suppress(OSError):
            raw.close()
    tmp.unlink(missing_ok=True)


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
    store_content_digest: str | None = None
    store_keys: set[str] = field(default_factory=set)
    store_sealed: bool = False  # False: an older vggtl's store, re-published with checksums
    notes: list[str] = field(default_factory=list)


def _read_entries(fh, file_path: Path, state: CachedState, skip_ok: bool) -> None:
    for row, key in enumerate(fh["entries/key"].asstr()[:]):
        state.sources.setdefault(key, (file_path, row))
    if skip_ok and "skipped" in fh:
        for sha, reason in zip(fh["skipped/sha256"][:], fh["skipped/reason"].asstr()[:]):
            state.skipped.setdefault(sha.decode(), reason)


class _Unusable(ValueError):
    """A store or part that cannot be trusted as a whole (its seal does not hold)."""


def _check_seal(fh) -> None:
    """A sealed file whose seal does not hold is unusable as a whole (its index
    cannot be trusted). Files of an older vggtl have no seal: reused as they are."""
    if integrity.is_sealed(fh) and (problem := integrity.seal_problem(fh)):
        raise _Unusable(problem)


def _drop_damaged_rows(fh, file_path: Path, found: CachedState, state: CachedState) -> None:
    """Forget the rows of a sealed file whose features fail their checksum, so
    that extraction recomputes exactly those."""
    if not integrity.is_sealed(fh):
        return
    key_of_row = {row: key for key, (_, row) in found.sources.items()}  # entries/key, as _read_entries read it
    damaged = {key_of_row[row] for layer in fh["features"] for row in integrity.damaged_rows(fh, layer)}
    for key in damaged:
        found.sources.pop(key, None)
    if damaged:
        state.notes.append(f"{file_path.name}: {len(damaged)} stored row(s) failed their checksum (the file was altered "
                           "or the disk is failing); recomputing exactly those")


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _quarantine(path: Path, store: Path, why: str, state: CachedState) -> None:
    """Move an unusable store or part beside the store, out of the parts folder
    (which is deleted after a successful run), under a unique name."""
    bad = store.parent / f"{path.name}.invalid-{time.time_ns()}"
    older = sorted(store.parent.glob(f"{glob_escape(path.name)}.invalid-*"))
    os.replace(path, bad)
    for old in older:  # keep the newest set-aside copy only: each can be gigabytes
        with contextlib.suppress(OSError):
            old.unlink()
    state.notes.append(f"{path.name} was unusable ({why}); moved aside to {bad} and recomputing"
                       + (f" (removed {len(older)} older set-aside copy/copies)" if older else ""))


def load_state(path: Path, fmt: StoreFormat) -> CachedState:
    """Collect cached features/skips from the store and complete part files.

    Files whose settings differ from ``fmt.settings`` are never used: a part or
    store built with other weights/layer/size is moved aside, not mixed in.
    Skip reasons are reused only when ``fmt.skip_settings`` (the pixel limit)
    match, so raising ``data.max_pixels`` retries the files it skipped.
    """
    state = CachedState()
    key, skip_settings = fmt.key, fmt.skip_settings
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
                    _check_seal(fh)
                    _read_entries(fh, file_path, found, skip_ok)
                    _drop_damaged_rows(fh, file_path, found, state)
                    if file_path == path:
                        found.store_ok = True
                        found.store_skip_ok = skip_ok
                        found.store_data_digest = fh.attrs.get("data_digest")
                        found.store_content_digest = fh.attrs.get("content_digest")
                        found.store_keys = set(found.sources)
                        found.store_sealed = integrity.is_sealed(fh)
        except _Unusable as exc:
            _quarantine(file_path, path, str(exc), state)
            continue
        except integrity.READ_ERRORS as exc:
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
            state.store_content_digest = found.store_content_digest
            state.store_keys = found.store_keys
            state.store_sealed = found.store_sealed
    return state


# --------------------------------------------------------------------------- writing


class PartWriter:
    """Buffers newly computed features and publishes them as atomic part files.

    A part is published every ``rows_per_part`` images or every
    ``seconds_per_part`` seconds, whichever comes first, so a killed run loses
    at most a few seconds of convolutions (at ~5 images/s on a 2-core CPU,
    256 images would be 50 s).
    """

    def __init__(self, path: Path, fmt: StoreFormat, rows_per_part: int = 256, seconds_per_part: float = 5.0):
        self.dir = parts_dir(path)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise path_error(exc, self.dir, "create the feature store's parts directory") from None
        self.settings_key = fmt.key
        self.skip_settings = json.dumps(fmt.skip_settings, sort_keys=True)
        self.shapes = {layer: tuple(shape) for layer, shape in fmt.shapes.items()}
        self.dtype = np.dtype(fmt.dtype)
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
        with _published_h5(target, "feature store part") as fh:
            fh.attrs["settings_key"] = self.settings_key
            fh.attrs["skip_settings"] = self.skip_settings
            fh.create_dataset("entries/key", data=self._keys, dtype=_STR, shape=(len(self._keys),))
            for layer, shape in self.shapes.items():
                chunks = self._feats[layer]
                feats = np.concatenate(chunks) if chunks else np.zeros((0, *shape), self.dtype)
                fh.create_dataset(f"features/{layer}", data=feats, **_row_checksums(len(feats), shape))
                integrity.write_row_digests(fh, layer, integrity.row_digests(feats))
            _write_skipped(fh, self._skipped)
            integrity.seal(fh)
        for row, key in enumerate(self._keys):
            self.written[key] = (target, row)
        self._keys, self._skipped = [], []
        self._feats = {layer: [] for layer in self.shapes}


def _row_checksums(rows: int, shape) -> dict:
    """One row per chunk, each with its Fletcher-32 checksum (:mod:`vggtl.features.integrity`);
    an empty dataset cannot be chunked and has nothing to check."""
    return {"chunks": (1, *shape), "fletcher32": True} if rows else {}


def _write_skipped(fh, skipped: list[tuple[str, str, str]]) -> None:
    shas = [s for s, _, _ in skipped]
    fh.create_dataset("skipped/sha256", data=np.array(shas, dtype="S64").reshape(-1))
    fh.create_dataset("skipped/path", data=[p for _, p, _ in skipped], dtype=_STR)
    fh.create_dataset("skipped/reason", data=[r for _, _, r in skipped], dtype=_STR)


def write_store(
    path: Path,
    fmt: StoreFormat,
    dataset: Dataset,
    sources: dict[str, tuple[Path, int]],
    skipped: dict[str, str],
    provenance: dict,
    view_keys=(),
) -> dict:
    """Write the complete store for ``dataset`` atomically; return its summary.

    Args:
        path: the store file.
        fmt: what it holds (settings, layers and shapes, dtype, views).
        dataset: the scanned data; its files make the index.
        sources: ``{key: (file, row)}`` of every computed entry (old store
            and part files).
        skipped: ``{content hash: reason}`` of undecodable files.
        provenance: ``config`` (YAML) and ``weights_source`` attributes.
        view_keys: keys of the augmented views to keep (those of skipped
            images are left out); every other view in ``sources`` drops out.

    Features are copied from ``sources`` in bounded chunks, so memory does
    not grow with the dataset.
    """
    good = [f for f in dataset.files if f.sha256 in sources]
    bad = [f for f in dataset.files if f.sha256 not in sources]
    missing = [f.relpath for f in bad if f.sha256 not in skipped]
    missing += [k for k in view_keys if content_hash(k) in sources and k not in sources]
    if missing:
        raise StoreError(f"internal: no features nor skip reason for {missing[:3]}")
    unique = list(dict.fromkeys(f.sha256 for f in good)) + [k for k in view_keys if k in sources]
    with _published_h5(path, "feature store") as fh:
        _write_attrs(fh, fmt, dataset, provenance)
        fh.create_dataset("entries/key", data=unique, dtype=_STR, shape=(len(unique),))
        for layer, shape in fmt.shapes.items():
            out = fh.create_dataset(
                f"features/{layer}",
                shape=(len(unique), *shape),
                dtype=fmt.dtype,
                compression=fmt.compression,
                **_row_checksums(len(unique), shape),
            )
            integrity.write_row_digests(fh, layer, _copy_features(out, layer, unique, sources))
        _write_index(fh, good, {key: i for i, key in enumerate(unique)})
        _write_skipped(fh, [(f.sha256, f.relpath, skipped[f.sha256]) for f in bad])
        integrity.seal(fh)
    return {"images": len(good), "entries": len(unique), "skipped": len(bad)}


def _write_attrs(fh, fmt: StoreFormat, dataset: Dataset, provenance: dict) -> None:
    attrs = {
        "settings": json.dumps(fmt.settings, sort_keys=True),
        "settings_key": fmt.key,
        "skip_settings": json.dumps(fmt.skip_settings, sort_keys=True),
        "class_names": json.dumps(dataset.class_names),
        "data_digest": dataset.digest(),
        "content_digest": dataset.content_digest(),
        "split_digest": dataset.split_digest(),
        "config": provenance["config"],
        "augment": json.dumps(fmt.augment),
        "weights_source": provenance["weights_source"],
        "schema_version": SCHEMA_VERSION,
        "vggtl_version": vggtl.__version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "layers": json.dumps(list(fmt.shapes)),
        "feature_shapes": json.dumps({layer: list(shape) for layer, shape in fmt.shapes.items()}),
    }
    for key, value in attrs.items():
        fh.attrs[key] = value


def _write_index(fh, files, row_of: dict[str, int]) -> None:
    fh.create_dataset("index/path", data=[f.relpath for f in files], dtype=_STR)
    fh.create_dataset("index/label", data=np.array([f.label for f in files], dtype="i4"))
    fh.create_dataset("index/split", data=np.array([SPLIT_CODES[f.split] for f in files], dtype="i1"))
    fh.create_dataset("index/entry", data=np.array([row_of[f.sha256] for f in files], dtype="i8"))


def _copy_features(out, layer: str, unique: list[str], sources: dict[str, tuple[Path, int]]) -> np.ndarray:
    """Fill ``out`` (one layer) row by row from the source files, reading in sorted
    runs; returns the digest of each row written (:func:`integrity.row_digests`)."""
    digests = np.zeros(len(unique), dtype=np.uint64)
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
                block = _dense_read(feats, first, last) if last - first < 2 * len(chunk) else None
                if block is not None:
                    at = [s - first for s in src_rows]
                else:
                    # Sparse rows (e.g. most images removed since the old store
                    # was written): a contiguous read could span the whole
                    # file, so read just these rows (sorted and unique, as
                    # h5py requires) and keep memory bounded by _COPY_ROWS.
                    block, at = feats[src_rows], range(len(chunk))
                for row, (_, dst) in zip(at, chunk):
                    value = np.asarray(block[row : row + 1], dtype=out.dtype)
                    out[dst] = value[0]
                    digests[dst] = integrity.row_digests(value)[0]
    return digests


def _dense_read(feats, first: int, last: int):
    """Rows ``first..last`` in one contiguous read (fastest for a dense run), or
    None when one of them fails its checksum: a row load_state dropped, not
    copied, so only the rows wanted are read."""
    try:
        return feats[first : last + 1]
    except OSError:
        return None


def clear_parts(path: Path) -> None:
    """Delete the part files once their features are in the published store."""
    folder = parts_dir(path)
    if folder.is_dir():
        for part in folder.glob("part-*.h5"):
            part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # keep anything we did not create
            folder.rmdir()


# --------------------------------------------------------------------------- reading


class BlockCache:
    """The least recently used blocks of a read-only store, up to ``budget`` bytes in all."""

    def __init__(self, budget: int):
        self.budget, self.size = budget, 0
        self._blocks: collections.OrderedDict = collections.OrderedDict()

    def get(self, key):
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
        return block

    def put(self, key, block: np.ndarray) -> None:
        if block.nbytes > self.budget or key in self._blocks:
            return
        block.flags.writeable = False  # readers get copies (fancy indexing); nothing may change a kept block
        self._blocks[key] = block
        self.size += block.nbytes
        while self.size > self.budget:
            _, dropped = self._blocks.popitem(last=False)
            self.size -= dropped.nbytes


class FeatureStore:
    """Read-only access to a complete store; features are streamed in blocks,
    the blocks read kept in RAM up to :data:`BLOCK_CACHE_BYTES`.

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
        self._cache = BlockCache(BLOCK_CACHE_BYTES)
        self._averaged: dict[str, np.ndarray] = {}  # layer -> every row's average-pooled clean map
        if not self.path.is_file():
            raise StoreError(f"feature store {self.path} does not exist; run {invocation('extract')} CONFIG first")
        try:
            self._fh = h5py.File(self.path, "r")
        except integrity.READ_ERRORS as exc:
            raise StoreError(f"feature store {self.path} cannot be opened ({exc}); run extract: it sets a damaged "
                             "store aside and rebuilds it") from None
        try:
            self._open_index()
        except BaseException:
            self._fh.close()
            raise

    def _open_index(self) -> None:
        # False: written before stores were sealed (train asks for an extract, which seals it).
        self.sealed = integrity.is_sealed(self._fh)
        if self.sealed and (problem := integrity.seal_problem(self._fh)):
            raise StoreError(f"feature store {self.path}: {problem}; run extract: it sets the store aside and recomputes it")
        try:
            attrs = self._fh.attrs
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise StoreError(f"feature store {self.path} has schema {attrs.get('schema_version')}, "
                                 f"this vggtl reads {SCHEMA_VERSION}; re-run extract")
            self._read_index(attrs)
        except integrity.READ_ERRORS as exc:  # an unsealed (older) store that is damaged
            raise StoreError(f"feature store {self.path} cannot be read ({exc}); run extract: it sets a damaged "
                             "store aside and rebuilds it") from None

    def _read_index(self, attrs) -> None:
        self.settings_key: str | None = attrs.get("settings_key")
        self.class_names: list[str] = json.loads(attrs["class_names"])
        self.settings: dict = json.loads(attrs["settings"])
        self.data_digest: str = attrs["data_digest"]
        # None in stores written before splits moved to train time: they are re-published by extract.
        self.content_digest: str | None = attrs.get("content_digest")
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
        self.skipped_hashes = {sha.decode() for sha in self._fh["skipped/sha256"][:]}

    def close(self) -> None:
        self._fh.close()

    def verify(self) -> None:
        """Read every stored feature once, checking each row's checksum.

        Raises:
            StoreError: naming the store, how many rows fail and their files,
                and that ``extract`` recomputes exactly those.
        """
        damaged = sorted({row for layer in self.layers for row in integrity.damaged_rows(
            self._fh, layer, functools.partial(self._keep_verified, layer))})
        if not damaged:
            return
        hashes = {content_hash(self._entry_keys[row]) for row in damaged}
        files = sorted({str(p) for p, e in zip(self.paths, self.entries) if self._entry_keys[e] in hashes})
        raise StoreError(
            f"feature store {self.path}: {len(damaged)} stored row(s) fail their checksum (the file was altered or the "
            f"disk is failing), features of {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}; "
            "run extract: it recomputes exactly those rows"
        )

    def _keep_verified(self, layer: str, start: int, block: np.ndarray) -> None:
        """Keep a block verify() read when it is exactly a block readers ask for."""
        rows = self._fh[f"features/{layer}"].shape[0]
        if start % READ_BLOCK == 0 and len(block) == min(READ_BLOCK, rows - start):
            self._cache.put((layer, start // READ_BLOCK), block)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def use_split(self, assignment: dict[str, str]) -> None:
        """Split the index as ``{relative path: split}`` says (a split made at
        train time), instead of the split recorded at extraction.

        Raises:
            StoreError: a path of the index has no split (the store does not
                match the data it is used with).
        """
        try:
            self.splits = np.array([SPLIT_CODES[assignment[p]] for p in self.paths], dtype="i1")
        except KeyError as exc:
            raise StoreError(f"feature store {self.path} indexes {exc.args[0]!r}, which the data does not have; re-run extract") from None

    def split_rows(self, split: str) -> np.ndarray:
        """Index rows (into paths/labels) belonging to ``split``."""
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.splits == SPLIT_CODES[split])

    def features(self, rows, layer: str | None = None, dtype="float32") -> np.ndarray:
        """Clean features of the given index rows, in the order given."""
        return self.entry_features(self.entries[np.asarray(rows, dtype=np.int64)], layer, dtype)

    @functools.cached_property
    def _entry_keys(self) -> np.ndarray:
        """``entries/key``, read once: clean keys (content hashes) and view keys."""
        return self._fh["entries/key"].asstr()[:]

    @functools.cached_property
    def _row_of_key(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self._entry_keys)}

    def entry_rows(self, keys) -> np.ndarray:
        """Entry rows of the given keys (e.g. view keys); StoreError names a missing one."""
        try:
            return np.array([self._row_of_key[k] for k in keys], dtype=np.int64)
        except KeyError as exc:
            raise StoreError(f"feature store {self.path} has no entry {exc.args[0]!r}; re-run extract") from None

    def view_features(self, rows, view: int, layer: str | None = None, dtype="float32") -> np.ndarray:
        """Features of augmented view ``view`` (1, 2, ...) of the given index rows."""
        keys = [view_key(sha, self.augment["digest"], view) for sha in self.clean_keys(rows)]
        return self.entry_features(self.entry_rows(keys), layer, dtype)

    def missing_views(self, rows, views: int) -> int:
        """How many of the given index rows lack any of views 1..``views``."""
        return int(np.count_nonzero(~self.rows_with_views(rows, views)))

    def rows_with_views(self, rows, views: int) -> np.ndarray:
        """Boolean mask over ``rows``: the row has every view 1..``views`` stored."""
        digest = self.augment.get("digest")
        return np.array(
            [all(view_key(sha, digest, v) in self._row_of_key for v in range(1, views + 1)) for sha in self.clean_keys(rows)],
            dtype=bool,
        )

    def clean_keys(self, rows) -> list[str]:
        """Content hashes (clean entry keys) of the given index rows."""
        return [self._entry_keys[e] for e in self.entries[np.asarray(rows, dtype=np.int64)]]

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
            out[lo:hi] = self._block(dataset, layer, int(block))[unique[lo:hi] - start]
        return out

    def _block(self, dataset, layer: str, block: int) -> np.ndarray:
        """Rows ``block * READ_BLOCK`` ... of ``layer``, from the cache or the file (then kept)."""
        if (chunk := self._cache.get((layer, block))) is not None:
            return chunk
        start = block * READ_BLOCK
        try:
            chunk = dataset[start : min(start + READ_BLOCK, dataset.shape[0])]
        except integrity.READ_ERRORS as exc:  # a row changed on disk after verify(): never use it
            raise StoreError(f"feature store {self.path}: rows {start}-{start + READ_BLOCK - 1} of {layer} cannot "
                             f"be read ({exc}); run extract: it recomputes the rows that fail their checksum") from None
        self._cache.put((layer, block), chunk)
        return chunk

    def averaged(self, rows, layer: str | None = None, batch_size: int = 256) -> np.ndarray:
        """``(N, C)`` float32: the global average of each clean map of ``layer``
        for the given index rows. Computed for every row of the store on the
        first call (``batch_size`` maps read at a time) and kept (4 bytes per
        channel and row): a run's unknown detector, linear probe and leakage
        audit (and a head with ``avg`` pooling) all read them, and a store
        larger than the block cache would be read from disk once for each."""
        layer = layer or self.layers[0]
        if (averaged := self._averaged.get(layer)) is None:
            chunks = [maps.mean(axis=(1, 2)) for _, maps in self.iter_batches(np.arange(len(self.paths)), batch_size, layer)]
            width = self.feature_shapes[layer][-1]
            averaged = self._averaged[layer] = np.concatenate([np.zeros((0, width), np.float32), *chunks])
        return averaged[np.asarray(rows, dtype=np.int64)]

    def iter_batches(self, rows, batch_size: int = 256, layer: str | None = None):
        """Yield ``(rows_chunk, features_chunk)`` of ``layer`` so callers never hold all features."""
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield chunk, self.features(chunk, layer)

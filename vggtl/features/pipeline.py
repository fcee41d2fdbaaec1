"""The extraction pipeline: run the frozen base over every image once.

Scans ``data.root``, works out which images the feature store already holds
(by content hash), decodes and pushes only the missing ones (and missing
augmented views) through the frozen convolutional base, and publishes the
updated store atomically. A warm re-run on unchanged data hashes the files,
sees nothing to do and returns without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from vggtl import config, data
from vggtl.errors import ConfigError, DataError
from vggtl.features import augment, runtimes, store
from vggtl.features.forward import Job, job_decoder, make_forward  # noqa: F401 - Job: part of this module's API
from vggtl.files import make_dir
from vggtl.plan import RunPlan, StoreLocation, as_plan

ROWS_PER_PART = 256
ROWS_PER_PART_ENV = "VGGTL_ROWS_PER_PART"


@dataclass
class ExtractResult:
    """What an extraction did; also what tests and benchmarks inspect."""

    store_path: Path
    dataset: data.Dataset
    computed: int  # entries computed now: images and augmented views
    reused: int  # entries taken from the store or earlier parts
    skipped: dict[str, str]  # relpath -> reason
    seconds: float
    up_to_date: bool


# --------------------------------------------------------------------------- decoding pipeline


def decoded_stream(jobs, decode, workers: int, lookahead: int):
    """Yield ``(job, [(key, pixels), ...] or None, reason or None)`` in order,
    decoding ahead in threads.

    At most ``lookahead`` jobs are in flight, so memory stays bounded
    whatever the dataset size; Pillow releases the GIL while decoding, so the
    threads overlap with the convolutions running in the main thread.
    """
    jobs = iter(jobs)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending = deque((job, pool.submit(decode, job)) for job in islice(jobs, lookahead))
        while pending:
            job, future = pending.popleft()
            nxt = next(jobs, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode, nxt)))
            try:
                yield job, future.result(), None
            except data.UndecodableImage as exc:
                yield job, None, str(exc)


def batched(stream, batch_size: int, writer: store.PartWriter):
    """Group decoded images into ``[(key, pixels), ...]`` batches; undecodable
    files go straight to the writer."""
    batch = []
    for job, items, reason in stream:
        if items is None:
            writer.add_skipped(job.file.sha256, job.file.relpath, reason)
            continue
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def feature_engine(cfg: config.Config, where: StoreLocation, log=print):
    """Yield ``compute(jobs, writer, progress)`` for ``extract.engine``: this
    process (local) or Ray actors (ray; see :mod:`vggtl.features.ray_engine`)."""
    if cfg.extract.engine == "ray":
        from vggtl.features import ray_engine

        with ray_engine.engine(cfg, where.weights, where.format, log) as compute:
            yield compute
        return
    forward = make_forward(cfg, where.weights, log, where.calibration)
    yield lambda jobs, writer, progress=True: compute_features(jobs, cfg, forward, writer, progress)


def compute_features(jobs, cfg, forward, writer: store.PartWriter, progress: bool = True) -> None:
    """Decode the ``jobs``' images (and views), run ``forward`` (see :func:`make_forward`),
    hand features to ``writer``."""
    from tqdm import tqdm

    stream = decoded_stream(jobs, job_decoder(cfg), cfg.extract.workers, lookahead=2 * cfg.extract.batch_size)
    total = sum(len(job.keys) for job in jobs)
    with tqdm(total=total, unit="img", desc="extract", disable=None if progress else True, file=sys.stderr) as bar:
        for batch in batched(stream, cfg.extract.batch_size, writer):
            features = forward(np.stack([p for _, p in batch]))
            writer.add([key for key, _ in batch], {layer: np.asarray(f) for layer, f in features.items()})
            bar.update(len(batch))
        bar.update(total - bar.n)
    writer.flush()


def rows_per_part() -> int:
    """Images per part file: a ``kill -9`` loses at most this much finished work.

    Not a config key, since it never changes results; ``$VGGTL_ROWS_PER_PART``
    overrides it so tests can make several parts out of a tiny dataset.
    """
    raw = os.environ.get(ROWS_PER_PART_ENV, "").strip()
    if not raw:
        return ROWS_PER_PART
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"${ROWS_PER_PART_ENV}={raw!r}: expected a positive integer; unset it to use {ROWS_PER_PART}")
    return int(raw)


def view_keys(cfg: config.Config, dataset: data.Dataset) -> list[str]:
    """Keys of the augmented views wanted: ``augment.views`` per distinct training image."""
    if not cfg.augment.views:
        return []
    digest = augment.settings_digest(cfg.augment)
    shas = dict.fromkeys(f.sha256 for f in dataset.files if f.split == "train")
    return [store.view_key(sha, digest, v) for sha in shas for v in range(1, cfg.augment.views + 1)]


# --------------------------------------------------------------------------- the run


def run(plan, progress: bool = True, log=print) -> ExtractResult:
    """Bring the feature store of a plan up to date with ``data.root``.

    The store holds the features of every usable image, keyed by content,
    whatever the split; augmented views are made for the training images of
    the plan's split (and kept for others that have them, so a new split
    recomputes only the views its new training images lack).

    Args:
        plan: a :class:`~vggtl.plan.RunPlan`, or a validated config
            (:func:`vggtl.config.load`) to plan here.
        progress: show a progress bar on stderr while computing.
        log: where notes and warnings go, one line per call.

    Returns:
        An :class:`ExtractResult`.

    Raises:
        DataError, WeightsError, StoreError, PathError: user-fixable
            problems, raised before anything is written when they concern the
            data or config; the published store is never left half-written.
        MissingExtra: the runtime or engine asked for is not installed
            (checked before the weights are fetched).
    """
    start = time.perf_counter()
    part_rows = rows_per_part()
    check_engine(plan.cfg if isinstance(plan, RunPlan) else plan)
    plan = as_plan(plan)
    cfg, where = plan.cfg, plan.store
    for note in plan.dataset.warnings:
        log(f"warning: {note}")
    if plan.note:
        log(plan.note)
    make_dir(where.path.parent, "cache.path")
    with store.locked(where.path):
        store.remove_stale_temporaries(where.path)
        state = store.load_state(where.path, where.format)
        for note in state.notes:
            log(f"warning: {note}")
        dataset = usable_split(plan, state.skipped, log)
        if _up_to_date(cfg, where.path, state, dataset):
            return _result(cfg, where.path, dataset, 0, state, start, True)
        dataset, computed = _update(plan, dataset, state, part_rows, progress, log)
    return _result(cfg, where.path, dataset, computed, state, start, False)


def check_engine(cfg: config.Config) -> None:
    """Refuse, before any work, a runtime or engine whose extra is not installed (imports nothing)."""
    runtimes.check_installed(cfg.extract.runtime, cfg.extract.precision)
    if cfg.extract.engine == "ray":
        from vggtl.features import ray_engine

        ray_engine.check_installed()


def usable_split(plan: RunPlan, skipped, log=print) -> data.Dataset:
    """The plan's split over the usable images, for extraction: when the
    undecodable files (``skipped``: content hashes) leave a class too small to
    split, extraction goes on with a warning and the split made as if every
    file could be decoded (their features are worth keeping); train then
    refuses with the same message."""
    try:
        return plan.split(skipped)
    except DataError as exc:
        log(f"warning: {exc}")
        return plan.split()


def _up_to_date(cfg, path: Path, state: store.CachedState, dataset: data.Dataset) -> bool:
    """The published store holds every wanted entry and nothing stale, with no parts pending.

    A store whose skip reasons came from other skip settings (e.g. a lower
    data.max_pixels) is not up to date: those files get retried. Other
    augment settings change the wanted view keys, so only views are redone.
    """
    parts = store.parts_dir(path)
    has_parts = parts.is_dir() and any(parts.iterdir())
    fresh = (state.store_ok and state.store_skip_ok and state.store_sealed
             and state.store_content_digest == dataset.content_digest())
    wanted = _wanted_keys(dataset, view_keys(cfg, dataset), state.skipped)
    return fresh and not has_parts and wanted <= state.store_keys <= _allowed_keys(cfg, dataset, state.skipped)


def _update(plan: RunPlan, dataset, state: store.CachedState, part_rows, progress, log):
    """Compute what is missing and publish the new store; returns the dataset
    (split again if new undecodable files changed it) and the entries computed.
    Updates ``state.skipped`` with the files found undecodable now."""
    cfg, where = plan.cfg, plan.store
    views = view_keys(cfg, dataset)
    jobs = _jobs(dataset, views, state.sources, state.skipped)
    n_todo = sum(len(job.keys) for job in jobs)
    cached = len(_wanted_keys(dataset, views, state.skipped) & set(state.sources))
    log(f"extract: {n_todo} image(s)/view(s) to compute, {cached} cached; weights: {where.weights.source}")
    with contextlib.ExitStack() as stack:
        # Built (weights loaded) before the part writer exists: a weights file
        # that does not fit the backbone fails without leaving anything behind.
        compute = stack.enter_context(feature_engine(cfg, where, log)) if jobs else None
        writer = store.PartWriter(where.path, where.format, part_rows)
        while jobs:
            compute(jobs, writer, progress)
            state.skipped = {**state.skipped, **writer.skipped_reasons}
            # Files found undecodable just now can move a class's quota boundary:
            # views for images that became training images are computed too.
            dataset = usable_split(plan, state.skipped, log=lambda _: None)
            views = view_keys(cfg, dataset)
            jobs = _jobs(dataset, views, {**state.sources, **writer.written}, state.skipped)
    provenance = {"config": cfg.to_yaml(), "weights_source": where.weights.source}
    sources = {**state.sources, **writer.written}
    keep = sorted(k for k in _allowed_keys(cfg, dataset, state.skipped) if k in sources and k != store.content_hash(k))
    store.write_store(where.path, where.format, dataset, sources, state.skipped, provenance, view_keys=keep)
    store.clear_parts(where.path)
    return dataset, writer.computed


def _wanted_keys(dataset: data.Dataset, views: list[str], skipped: dict[str, str]) -> set[str]:
    """Every key the store must hold: clean features of decodable images and
    the views of the training images."""
    wanted = {f.sha256 for f in dataset.files if f.sha256 not in skipped}
    return wanted | {k for k in views if store.content_hash(k) not in skipped}


def _allowed_keys(cfg, dataset: data.Dataset, skipped: dict[str, str]) -> set[str]:
    """Every key the store may hold: clean features of decodable images and any
    view of them under the current augment settings (views of images that are
    not training images now are kept for the splits that make them so)."""
    usable = {f.sha256 for f in dataset.files if f.sha256 not in skipped}
    if not cfg.augment.views:
        return usable
    digest = augment.settings_digest(cfg.augment)
    return usable | {store.view_key(sha, digest, v) for sha in usable for v in range(1, cfg.augment.views + 1)}


def _jobs(dataset: data.Dataset, views: list[str], sources, skipped) -> list[Job]:
    """One job per distinct image with something missing (clean features or views)."""
    missing_views: dict[str, list[str]] = {}
    for key in views:
        if key not in sources:
            missing_views.setdefault(store.content_hash(key), []).append(key)
    seen, jobs = set(), []
    for f in dataset.files:
        if f.sha256 in seen or f.sha256 in skipped:
            continue
        seen.add(f.sha256)
        keys = ([] if f.sha256 in sources else [f.sha256]) + missing_views.get(f.sha256, [])
        if keys:
            jobs.append(Job(f, tuple(keys)))
    return jobs


def _result(cfg, path, dataset, computed, state, start, up_to_date) -> ExtractResult:
    skipped = {f.relpath: state.skipped[f.sha256] for f in dataset.files if f.sha256 in state.skipped}
    n_entries = len(_wanted_keys(dataset, view_keys(cfg, dataset), state.skipped))
    return ExtractResult(
        store_path=path,
        dataset=dataset,
        computed=computed,
        reused=n_entries - computed,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        up_to_date=up_to_date,
    )

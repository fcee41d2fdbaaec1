"""``python -m vggtl.extract CONFIG`` -- run the frozen base over every image once.

Scans ``data.root``, works out which images the feature store already holds
(by content hash), decodes and pushes only the missing ones through the
frozen convolutional base (VGG16 by default), and publishes the updated
store atomically. A warm re-run on unchanged data hashes the files, sees
nothing to do and exits without importing TensorFlow.
"""

from __future__ import annotations

import argparse
import json
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
from vggtl.backbones import build, registry
from vggtl.features import augment, store
from vggtl.errors import ConfigError, cli_entry

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


def store_settings(cfg: config.Config, weights: build.ResolvedWeights) -> dict:
    """Everything that changes the stored feature values; its digest names the store."""
    return {
        "backbone": cfg.backbone.name,
        "layers": cfg.stored_layers(),
        "weights_digest": weights.digest,
        "image_size": cfg.data.image_size,
        "resize": cfg.data.resize,
        "background": list(cfg.background_rgb),
        "preprocessing": registry.get(cfg.backbone.name).preprocessing_description,
        "dtype": cfg.cache.dtype,
        "schema_version": store.SCHEMA_VERSION,
    }


def skip_settings(cfg: config.Config) -> dict:
    """Settings that decide whether a file is skipped; changing them retries skipped files."""
    return {"max_pixels": cfg.data.max_pixels}


def scan_dataset(cfg: config.Config) -> data.Dataset:
    return data.scan(
        cfg.data.root,
        cfg.data.extensions,
        seed=cfg.seed,
        val=cfg.data.split.val,
        test=cfg.data.split.test,
        workers=max(2, cfg.extract.workers),
    )


def locate_store(cfg: config.Config, allow_download: bool = True) -> tuple[Path, dict, build.ResolvedWeights]:
    weights = build.resolve_weights(cfg.backbone.weights, cfg.seed, allow_download=allow_download, name=cfg.backbone.name)
    settings = store_settings(cfg, weights)
    return store.store_path(cfg.cache.path, cfg.name, settings), settings, weights


# --------------------------------------------------------------------------- decoding pipeline


@dataclass(frozen=True)
class Job:
    """One image file and the store keys still to compute for it: its clean
    features (key = content hash) and/or augmented views (view keys)."""

    file: data.ImageFile
    keys: tuple[str, ...]


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


def make_forward(cfg: config.Config, weights: build.ResolvedWeights):
    """A compiled function: uint8 images -> {layer: features} for every stored layer
    (one pass through the base, however many layers are kept). Imports TensorFlow."""
    from vggtl import tfquiet

    tf = tfquiet.load()
    layers = cfg.stored_layers()
    model = build.feature_model(cfg.backbone.name, weights, cfg.data.image_size, layers, cfg.seed)
    size = cfg.data.image_size
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8)

    def forward(x):
        outputs = model(x, training=False)
        return dict(zip(layers, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    return tf.function(forward, input_signature=[spec])


def compute_features(jobs, cfg, forward, writer: store.PartWriter, progress: bool = True) -> None:
    """Decode the ``jobs``' images (and views), run ``forward`` (see :func:`make_forward`),
    hand features to ``writer``."""
    from tqdm import tqdm

    stream = decoded_stream(jobs, _job_decoder(cfg), cfg.extract.workers, lookahead=2 * cfg.extract.batch_size)
    total = sum(len(job.keys) for job in jobs)
    with tqdm(total=total, unit="img", desc="extract", disable=None if progress else True, file=sys.stderr) as bar:
        for batch in batched(stream, cfg.extract.batch_size, writer):
            features = forward(np.stack([p for _, p in batch]))
            writer.add([key for key, _ in batch], {layer: f.numpy() for layer, f in features.items()})
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


def _decoder(cfg: config.Config):
    """path -> clean decoded pixels, with the config's size, resize policy and background."""
    size, mode, bg, limit = cfg.data.image_size, cfg.data.resize, cfg.background_rgb, cfg.data.max_pixels

    def decode(path):
        return data.decode_image(path, size, mode, bg, limit)

    return decode


def _job_decoder(cfg: config.Config):
    """Job -> [(key, pixels)]: the file is decoded once, views are warped from it."""
    decode = _decoder(cfg)

    def decode_job(job: Job):
        clean = decode(job.file.path)
        items = []
        for key in job.keys:
            if key == job.file.sha256:
                items.append((key, clean))
            else:
                view = int(key.rsplit(":", 1)[1])
                rng = augment.view_rng(cfg.seed, job.file.sha256, view)
                items.append((key, augment.augment_image(clean, cfg.augment, rng, cfg.background_rgb)))
        return items

    return decode_job


def view_keys(cfg: config.Config, dataset: data.Dataset) -> list[str]:
    """Keys of the augmented views wanted: ``augment.views`` per distinct training image."""
    if not cfg.augment.views:
        return []
    digest = cfg.augment.digest()
    shas = dict.fromkeys(f.sha256 for f in dataset.files if f.split == "train")
    return [augment.view_key(sha, digest, v) for sha in shas for v in range(1, cfg.augment.views + 1)]


# --------------------------------------------------------------------------- the run


def run(cfg: config.Config, progress: bool = True, log=print) -> ExtractResult:
    """Bring the feature store for ``cfg`` up to date with ``data.root``.

    Returns:
        An :class:`ExtractResult`.

    Raises:
        DataError, WeightsError, StoreError: user-fixable problems, raised
            before anything is written when they concern the data or config.
    """
    start = time.perf_counter()
    part_rows = rows_per_part()
    dataset = scan_dataset(cfg)
    for note in dataset.warnings:
        log(f"warning: {note}")
    path, settings, weights = locate_store(cfg)
    shapes = {layer: build.feature_shape(layer, cfg.data.image_size, cfg.backbone.name) for layer in cfg.stored_layers()}
    skip_cfg = skip_settings(cfg)
    views = view_keys(cfg, dataset)
    with store.locked(path):
        store.remove_stale_temporaries(path)
        state = store.load_state(path, settings, skip_cfg)
        for note in state.notes:
            log(f"warning: {note}")
        has_parts = store.parts_dir(path).is_dir() and any(store.parts_dir(path).iterdir())
        wanted = _wanted_keys(dataset, views, state.skipped)
        # A store whose skip reasons came from other skip settings (e.g. a
        # lower data.max_pixels) is not up to date: those files get retried.
        # Other augment settings change the wanted view keys, so only the
        # views are recomputed.
        fresh = state.store_ok and state.store_skip_ok and state.store_data_digest == dataset.digest()
        if fresh and not has_parts and state.store_keys == wanted:
            return _result(path, dataset, 0, state, start, True, len(wanted))
        jobs = _jobs(dataset, views, state)
        n_todo = sum(len(job.keys) for job in jobs)
        cached = len(wanted & set(state.sources))
        log(f"extract: {n_todo} image(s)/view(s) to compute, {cached} cached; weights: {weights.source}")
        # Built (weights loaded) before the part writer exists: a weights file
        # that does not fit the backbone fails without leaving anything behind.
        forward = make_forward(cfg, weights) if jobs else None
        writer = store.PartWriter(path, settings, skip_cfg, shapes, cfg.cache.dtype, part_rows)
        if jobs:
            compute_features(jobs, cfg, forward, writer, progress)
        sources = {**state.sources, **writer.written}
        skipped = {**state.skipped, **writer.skipped_reasons}
        attrs = {
            "settings": json.dumps(settings, sort_keys=True),
            "settings_key": store.settings_key(settings),
            "skip_settings": json.dumps(skip_cfg, sort_keys=True),
            "class_names": json.dumps(dataset.class_names),
            "data_digest": dataset.digest(),
            "config": cfg.to_yaml(),
            "augment": json.dumps({"views": cfg.augment.views, "digest": cfg.augment.digest()}),
            "weights_source": weights.source,
        }
        store.write_store(
            path, dataset, sources, skipped, attrs, shapes, cfg.cache.dtype, cfg.cache.compression, view_keys=views
        )
        store.clear_parts(path)
    state.skipped = skipped
    n_entries = len(_wanted_keys(dataset, views, skipped))
    return _result(path, dataset, writer.computed, state, start, False, n_entries)


def _wanted_keys(dataset: data.Dataset, views: list[str], skipped: dict[str, str]) -> set[str]:
    """Every key the store must hold: clean features of decodable images and their views."""
    wanted = {f.sha256 for f in dataset.files if f.sha256 not in skipped}
    return wanted | {k for k in views if k.split(":", 1)[0] not in skipped}


def _jobs(dataset: data.Dataset, views: list[str], state: store.CachedState) -> list[Job]:
    """One job per distinct image with something missing (clean features or views)."""
    missing_views: dict[str, list[str]] = {}
    for key in views:
        if key not in state.sources:
            missing_views.setdefault(key.split(":", 1)[0], []).append(key)
    seen, jobs = set(), []
    for f in dataset.files:
        if f.sha256 in seen or f.sha256 in state.skipped:
            continue
        seen.add(f.sha256)
        keys = ([] if f.sha256 in state.sources else [f.sha256]) + missing_views.get(f.sha256, [])
        if keys:
            jobs.append(Job(f, tuple(keys)))
    return jobs


def _result(path, dataset, computed, state, start, up_to_date, n_entries) -> ExtractResult:
    skipped = {f.relpath: state.skipped[f.sha256] for f in dataset.files if f.sha256 in state.skipped}
    return ExtractResult(
        store_path=path,
        dataset=dataset,
        computed=computed,
        reused=n_entries - computed,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        up_to_date=up_to_date,
    )


def print_summary(result: ExtractResult, log=print) -> None:
    counts = result.dataset.counts()
    ok = len(result.dataset.files) - len(result.skipped)
    size_mb = result.store_path.stat().st_size / 1e6 if result.store_path.is_file() else 0.0
    log(f"store: {result.store_path} ({size_mb:.1f} MB)")
    log(f"classes ({len(result.dataset.class_names)}): {', '.join(result.dataset.class_names)}")
    for split in data.SPLITS:
        log(f"  {split:5s} {sum(counts[split].values()):6d} images")
    if result.up_to_date:
        log(f"up to date: {ok} images cached, nothing computed ({result.seconds:.2f} s)")
    else:
        rate = result.computed / result.seconds if result.seconds else 0.0
        log(f"computed {result.computed}, reused {result.reused} in {result.seconds:.1f} s ({rate:.1f} img/s overall)")
    if result.skipped:
        log(f"skipped {len(result.skipped)} file(s) that could not be decoded:")
        for relpath, reason in sorted(result.skipped.items()):
            log(f"  {relpath}: {reason}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vggtl extract", description=__doc__.splitlines()[0])
    config.add_arguments(parser, config_required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    cfg = config.from_args(args)
    result = run(cfg, progress=not args.no_progress)
    print_summary(result)
    config.remember_last_extract(cfg, args.config, args.set)
    return 0


main = cli_entry(main)

if __name__ == "__main__":
    sys.exit(main())

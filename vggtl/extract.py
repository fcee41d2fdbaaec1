"""``python -m vggtl.extract CONFIG`` -- run the frozen base over every image once.

Scans ``data.root``, works out which images the feature store already holds
(by content hash), decodes and pushes only the missing ones through the
frozen VGG16 base, and publishes the updated store atomically. A warm re-run
on unchanged data hashes the files, sees nothing to do and exits without
importing TensorFlow.
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

from vggtl import backbone, config, data, store
from vggtl.errors import ConfigError, cli_entry

ROWS_PER_PART = 256
ROWS_PER_PART_ENV = "VGGTL_ROWS_PER_PART"


@dataclass
class ExtractResult:
    """What an extraction did; also what tests and benchmarks inspect."""

    store_path: Path
    dataset: data.Dataset
    computed: int
    reused: int
    skipped: dict[str, str]  # relpath -> reason
    seconds: float
    up_to_date: bool


def store_settings(cfg: config.Config, weights: backbone.ResolvedWeights) -> dict:
    """Everything that changes the stored feature values; its digest names the store."""
    return {
        "backbone": cfg.backbone.name,
        "layer": cfg.backbone.layer,
        "weights_digest": weights.digest,
        "image_size": cfg.data.image_size,
        "resize": cfg.data.resize,
        "background": list(cfg.background_rgb),
        "preprocessing": backbone.PREPROCESSING,
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


def locate_store(cfg: config.Config, allow_download: bool = True) -> tuple[Path, dict, backbone.ResolvedWeights]:
    weights = backbone.resolve_weights(cfg.backbone.weights, cfg.seed, allow_download=allow_download)
    settings = store_settings(cfg, weights)
    return store.store_path(cfg.cache.path, cfg.name, settings), settings, weights


# --------------------------------------------------------------------------- decoding pipeline


def decoded_stream(files, decode, workers: int, lookahead: int):
    """Yield ``(file, pixels or None, reason or None)`` in order, decoding ahead in threads.

    At most ``lookahead`` images are in flight, so memory stays bounded
    whatever the dataset size; Pillow releases the GIL while decoding, so the
    threads overlap with the convolutions running in the main thread.
    """
    files = iter(files)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending = deque((f, pool.submit(decode, f.path)) for f in islice(files, lookahead))
        while pending:
            f, future = pending.popleft()
            nxt = next(files, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode, nxt.path)))
            try:
                yield f, future.result(), None
            except data.UndecodableImage as exc:
                yield f, None, str(exc)


def batched(stream, batch_size: int, writer: store.PartWriter):
    """Group decoded images into batches; undecodable ones go straight to the writer."""
    batch = []
    for f, pixels, reason in stream:
        if pixels is None:
            writer.add_skipped(f.sha256, f.relpath, reason)
            continue
        batch.append((f, pixels))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def make_forward(cfg: config.Config, weights: backbone.ResolvedWeights):
    """A compiled uint8-images -> features function (imports TensorFlow)."""
    from vggtl import tfquiet

    tf = tfquiet.load()
    model = backbone.feature_model(weights, cfg.data.image_size, cfg.backbone.layer, cfg.seed)
    size = cfg.data.image_size
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def compute_features(todo, cfg, weights, writer: store.PartWriter, progress: bool = True) -> None:
    """Decode ``todo`` files, run the base, and hand features to ``writer``."""
    from tqdm import tqdm

    forward = make_forward(cfg, weights)
    decode = _decoder(cfg)
    stream = decoded_stream(todo, decode, cfg.extract.workers, lookahead=2 * cfg.extract.batch_size)
    with tqdm(total=len(todo), unit="img", desc="extract", disable=None if progress else True, file=sys.stderr) as bar:
        for batch in batched(stream, cfg.extract.batch_size, writer):
            pixels = np.stack([p for _, p in batch])
            features = forward(pixels).numpy()
            writer.add([f.sha256 for f, _ in batch], features)
            bar.update(len(batch))
        bar.update(len(todo) - bar.n)
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
    size, mode, bg, limit = cfg.data.image_size, cfg.data.resize, cfg.background_rgb, cfg.data.max_pixels

    def decode(path):
        return data.decode_image(path, size, mode, bg, limit)

    return decode


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
    shape = backbone.feature_shape(cfg.backbone.layer, cfg.data.image_size)
    skip_cfg = skip_settings(cfg)
    with store.locked(path):
        store.remove_stale_temporaries(path)
        state = store.load_state(path, settings, skip_cfg)
        for note in state.notes:
            log(f"warning: {note}")
        has_parts = store.parts_dir(path).is_dir() and any(store.parts_dir(path).iterdir())
        # A store whose skip reasons came from other skip settings (e.g. a
        # lower data.max_pixels) is not up to date: those files get retried.
        fresh = state.store_ok and state.store_skip_ok and state.store_data_digest == dataset.digest()
        if fresh and not has_parts:
            return _result(path, dataset, 0, state, start, up_to_date=True)
        todo = _distinct_missing(dataset, state)
        cached = len({f.sha256 for f in dataset.files if f.sha256 in state.sources})
        log(f"extract: {len(todo)} image(s) to compute, {cached} cached; weights: {weights.source}")
        writer = store.PartWriter(path, settings, skip_cfg, shape, cfg.cache.dtype, part_rows)
        if todo:
            compute_features(todo, cfg, weights, writer, progress)
        sources = {**state.sources, **writer.written}
        skipped = {**state.skipped, **writer.skipped_reasons}
        attrs = {
            "settings": json.dumps(settings, sort_keys=True),
            "settings_key": store.settings_key(settings),
            "skip_settings": json.dumps(skip_cfg, sort_keys=True),
            "class_names": json.dumps(dataset.class_names),
            "data_digest": dataset.digest(),
            "config": cfg.to_yaml(),
            "layer": cfg.backbone.layer,
            "weights_source": weights.source,
        }
        store.write_store(path, dataset, sources, skipped, attrs, shape, cfg.cache.dtype, cfg.cache.compression)
        store.clear_parts(path)
    state.skipped = skipped
    return _result(path, dataset, writer.computed, state, start, up_to_date=False)


def _distinct_missing(dataset: data.Dataset, state: store.CachedState) -> list[data.ImageFile]:
    seen, todo = set(), []
    for f in dataset.files:
        if f.sha256 in seen or f.sha256 in state.sources or f.sha256 in state.skipped:
            continue
        seen.add(f.sha256)
        todo.append(f)
    return todo


def _result(path, dataset, computed, state, start, up_to_date) -> ExtractResult:
    skipped = {f.relpath: state.skipped[f.sha256] for f in dataset.files if f.sha256 in state.skipped}
    distinct = len({f.sha256 for f in dataset.files if f.sha256 not in state.skipped})
    return ExtractResult(
        store_path=path,
        dataset=dataset,
        computed=computed,
        reused=distinct - computed,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        up_to_date=up_to_date,
    )


def print_summary(result: ExtractResult, log=print) -> None:
    counts = result.dataset.counts()
    ok = len(result.dataset.files) - len(result.skipped)
    log(f"store: {result.store_path}")
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

"""The cost model of docs/scale-out.md, from per-image costs measured here.

Measures, on one CPU core each (what one ``extract.engine: ray`` actor gets):
decoding an image file, the frozen forward pass (TensorFlow, one intra-op
thread, ``extract.batch_size`` images per call), and on the driver: reading
an image's bytes, pickling its features (what Ray ships back) and writing
them to a part file. Then the fixed start-up of the Ray engine (a local
instance, actors loading the backbone), and optionally one whole ``extract``
with ``--set extract.engine=ray`` to check the model against.

Model: ``T(N, W) = start + N / min(W * r_worker, r_driver)`` with
``r_worker = 1 / (decode + forward)`` and ``r_driver = 1 / (read + pickle +
write)`` images per second. Example:

    VGGTL_VGG16_WEIGHTS=../shared/weights/vgg16_imagenet_notop.weights.h5 \\
        python scripts/bench_scale_out.py configs/clipart8-fast.yaml --check
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vggtl import config, plan, tfquiet
from vggtl.features import pipeline, ray_engine, store

FORWARD_IMAGES = 64


def per_image(seconds: float, n: int) -> float:
    return seconds / max(n, 1)


def measure_decode(cfg, files) -> tuple[float, float]:
    """Mean seconds per image over all files, and over the fastest 99% (without the giants)."""
    from vggtl import data

    times = []
    for f in files:
        start = time.perf_counter()
        try:
            cfg.spec.decode.decode(f.path)
        except data.UndecodableImage:
            continue
        times.append(time.perf_counter() - start)
    ordinary = sorted(times)[: max(1, int(len(times) * 0.99))]
    return float(np.mean(times)), float(np.mean(ordinary))


def measure_forward(cfg, weights, files) -> float:
    """Seconds per image of the forward pass on one TensorFlow thread."""
    tf = tfquiet.load()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    forward = pipeline.make_forward(cfg, weights, log=lambda _: None)
    pixels = np.stack([cfg.spec.decode.decode(f.path) for f in files[: cfg.extract.batch_size]])
    forward(pixels)  # trace and warm up
    batches = max(1, FORWARD_IMAGES // len(pixels))
    start = time.perf_counter()
    for _ in range(batches):
        forward(pixels)
    return per_image(time.perf_counter() - start, batches * len(pixels))


def measure_driver(cfg, where, files) -> dict:
    """Seconds per image of the driver's own work: read bytes, unpickle features, write parts."""
    start = time.perf_counter()
    for f in files:
        Path(f.path).read_bytes()
    read = per_image(time.perf_counter() - start, len(files))
    n = len(files)
    feats = {layer: np.random.default_rng(0).random((n, *shape)).astype(where.format.dtype) for layer, shape in where.format.shapes.items()}
    start = time.perf_counter()
    pickle.loads(pickle.dumps(feats, protocol=5))
    ship = per_image(time.perf_counter() - start, n)
    with tempfile.TemporaryDirectory() as tmp:
        writer = store.PartWriter(Path(tmp) / "s.h5", where.format, rows_per_part=256)
        start = time.perf_counter()
        for i in range(0, n, cfg.extract.batch_size):
            writer.add([f"k{j}" for j in range(i, min(n, i + cfg.extract.batch_size))],
                       {layer: a[i : i + cfg.extract.batch_size] for layer, a in feats.items()})
        writer.flush()
        write = per_image(time.perf_counter() - start, n)
    return {"read": read, "ship": ship, "write": write}


def measure_start(cfg, where) -> float:
    """Seconds to start a local Ray instance, start the actors (backbone loaded) and stop it all."""
    start = time.perf_counter()
    with ray_engine.engine(cfg, where.weights, where.format, log=lambda _: None):
        pass
    return time.perf_counter() - start


def whole_command(config_path: str, overrides: list[str]) -> float:
    """Wall seconds of one ``python -m vggtl.extract`` with a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-m", "vggtl.extract", config_path, "--no-progress", "--set", f"cache.path={cache}"]
        for override in overrides:
            command += ["--set", override]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def predicted(start: float, n: int, workers: int, r_worker: float, r_driver: float) -> float:
    return start + n / min(workers * r_worker, r_driver)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--check", action="store_true", help="also time one whole extract with the ray and local engines")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8, 32, 128, 512])
    args = parser.parse_args(argv)
    cfg = config.load(args.config, ["extract.engine=ray"])
    the_plan = plan.resolve(cfg)
    files = sorted(the_plan.dataset.files, key=lambda f: f.sha256)
    where = the_plan.store

    decode_all, decode_ordinary = measure_decode(cfg, files)
    forward = measure_forward(cfg, where.weights, files)
    driver = measure_driver(cfg, where, files)
    start = measure_start(cfg, where)
    r_worker = 1.0 / (decode_all + forward)
    r_driver = 1.0 / sum(driver.values())
    print(f"{len(files)} images of {cfg.data.root}; one CPU core per figure (ms per image):")
    print(f"  decode      {1e3 * decode_all:8.1f}   (without the largest 1%: {1e3 * decode_ordinary:.1f})")
    print(f"  forward     {1e3 * forward:8.1f}   ({cfg.spec.name}, batch {cfg.extract.batch_size}, 1 TensorFlow thread)")
    for name, value in driver.items():
        print(f"  driver {name:5s}{1e3 * value:8.2f}")
    print(f"  ray start + actors + stop: {start:.1f} s (local instance, {cfg.extract.workers} actor(s))")
    print(f"worker {r_worker:.2f} img/s, driver {r_driver:.0f} img/s: the driver saturates at ~{r_driver / r_worker:.0f} workers")
    print("predicted whole extraction (1 CPU per worker, start-up as measured here):")
    for n in (len(files), 1_000_000):
        cells = "  ".join(f"W={w}: {predicted(start, n, w, r_worker, r_driver) / 3600:.2f} h" if n > 10_000 else
                          f"W={w}: {predicted(start, n, w, r_worker, r_driver):.0f} s" for w in args.workers)
        print(f"  N={n}: {cells}")
    if args.check:
        workers = min(cfg.extract.workers, os.cpu_count() or 1)
        model = predicted(start, len(files), workers, r_worker, r_driver)
        on_ray = whole_command(args.config, ["extract.engine=ray"])
        local = whole_command(args.config, ["extract.engine=local"])
        print(f"check on this machine (W={workers}): predicted {model:.1f} s (+ process start-up), "
              f"measured ray {on_ray:.1f} s, local {local:.1f} s (ray/local {on_ray / local:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

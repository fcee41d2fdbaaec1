"""Peak memory of `vggtl train` as the store grows: clipart8's size and N times it.

Builds, for each size, a synthetic labelled tree (tiny distinct PNGs, 8
classes) and writes its feature store directly, with the same store writer
extraction uses (7x7x512 float16 maps at 224 px, class-dependent random
activations, so the head has something to learn) -- no forward pass, so a
10x store takes seconds. Then trains on it as ``vggtl train`` does, up to
publishing (the end-to-end check would rightly refuse an artifact whose
features did not come from its images), in a subprocess, and reads its peak RSS (``ru_maxrss`` from ``wait4`` of that child). Prints one
line per size and the ratio to the first. What issue "training that
streams" measures: peak RSS should not grow with the number of training
images beyond a few batches. Example:

    python scripts/bench_train_memory.py --images 429 4290
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from vggtl import config, plan
from vggtl.features import store

CLASSES = 8


def make_tree(root: Path, n: int) -> None:
    """``n`` distinct 8x8 PNGs over :data:`CLASSES` class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def write_config(tmp: Path, n: int) -> Path:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"mem{n}", "data": {"root": str(tmp / "data")}, "backbone": {"weights": None},
        "cache": {"path": str(tmp / "cache")}, "output": {"dir": str(tmp / "out")},
    }))
    return path


def write_store(cfg_path: Path) -> None:
    """The store extraction would write for the config, with synthetic features."""
    cfg = config.load(cfg_path)
    the_plan = plan.resolve(cfg)
    dataset, where = the_plan.split(), the_plan.store
    where.path.parent.mkdir(parents=True, exist_ok=True)
    shape = cfg.spec.feature_shape(cfg.spec.head_layer)
    writer = store.PartWriter(where.path, where.format, rows_per_part=512)
    rng = np.random.default_rng(1)
    centres = rng.gamma(1.0, 1.0, (CLASSES, shape[-1])).astype(np.float32)
    files = list({f.sha256: f for f in dataset.files}.values())
    for start in range(0, len(files), 256):
        chunk = files[start : start + 256]
        labels = np.array([f.label for f in chunk])  # class indices
        maps = np.maximum(0, centres[labels][:, None, None, :] + rng.normal(0, 2.0, (len(chunk), *shape))).astype(np.float32)
        writer.add([f.sha256 for f in chunk], {cfg.spec.head_layer: maps})
    writer.flush()
    store.write_store(where.path, where.format, dataset, writer.written, {}, {"config": cfg.to_yaml(), "weights_source": "synthetic"})
    store.clear_parts(where.path)


# What `vggtl train` does up to publishing: the synthetic features are not what
# the backbone computes from the images, so train's end-to-end check of the
# artifact would (rightly) refuse to publish it.
TRAIN_WITHOUT_PUBLISHING = """
import sys
from vggtl import config, plan
from vggtl.training import run
cfg = config.load(sys.argv[1])
the_plan = plan.resolve(cfg)
fs, dataset = run.open_current_store(the_plan)
trained = run.train_phases(cfg, fs, the_plan.weights)
run.evaluate(cfg, fs, dataset, trained)
"""


def peak_rss_of_train(cfg_path: Path) -> tuple[float, float]:
    """``(peak RSS in MB, wall seconds)`` of training on CONFIG's store (phases,
    baselines, evaluation; not publishing) in a child process."""
    import os

    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen([sys.executable, "-c", TRAIN_WITHOUT_PUBLISHING, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            log.seek(0)
            sys.exit(f"train failed:\n{log.read().decode(errors='replace')[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[429, 4290], help="store sizes, smallest first")
    args = parser.parse_args(argv)
    first = None
    for n in args.images:
        with tempfile.TemporaryDirectory(prefix=f"bench_train_memory-{n}-") as tmp:
            tmp = Path(tmp)
            make_tree(tmp / "data", n)
            cfg_path = write_config(tmp, n)
            write_store(cfg_path)
            rss, seconds = peak_rss_of_train(cfg_path)
        first = first or rss
        print(f"{n:7d} images: train peak RSS {rss:7.0f} MB ({rss / first:.2f}x the first), {seconds:.1f} s wall", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

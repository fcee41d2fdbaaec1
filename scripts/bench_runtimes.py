"""Compute-only speed and fidelity of each extraction runtime and precision, in one run.

Decodes the first N images of CONFIG's data (sorted paths, the giant PNGs
excluded by --max-side so decode time does not matter here), runs each
installed runtime's forward pass (``extract.runtime``, converted model cached
as extract does) in batches of extract.batch_size after one warm-up batch, and
prints images/s, the ratio to TensorFlow fp32 measured in this same run, and
the min / mean cosine similarity of the average-pooled features to
TensorFlow's. Example:

    VGGTL_VGG16_WEIGHTS=../shared/weights/vgg16_imagenet_notop.weights.h5 \\
        python scripts/bench_runtimes.py configs/clipart8.yaml --images 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vggtl import config
from vggtl.errors import MissingExtra
from vggtl.features import pipeline, runtimes


def decoded(cfg, n: int, max_side: int):
    from PIL import Image

    files = sorted(pipeline.scan_dataset(cfg).files, key=lambda f: f.relpath)
    images = []
    for f in files:
        with Image.open(f.path) as im:
            if max(im.size) > max_side:
                continue
        images.append(cfg.spec.decode.decode(f.path))
        if len(images) == n:
            break
    return np.stack(images)


def measure(cfg, runtime: str, precision: str, images: np.ndarray):
    cfg = cfg.with_overrides({"extract.runtime": runtime, "extract.precision": precision}, "bench")
    where = pipeline.locate_store(cfg, dataset=pipeline.scan_dataset(cfg))
    forward = pipeline.make_forward(cfg, where.weights, log=lambda _: None, calibration=where.calibration)
    batch = cfg.extract.batch_size
    forward(images[:batch])  # warm-up: graph building, allocation
    started = time.perf_counter()
    out = [np.asarray(forward(images[i : i + batch])[cfg.spec.head_layer]) for i in range(0, len(images), batch)]
    seconds = time.perf_counter() - started
    pooled = np.concatenate(out).reshape(len(images), -1, out[0].shape[-1]).mean(axis=1)
    return len(images) / seconds, pooled


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--max-side", type=int, default=4000)
    args = parser.parse_args(argv)
    cfg = config.load(args.config)
    images = decoded(cfg, args.images, args.max_side)
    rows = []
    for runtime, precision in [("tensorflow", "fp32"), ("openvino", "fp32"), ("onnxruntime", "fp32"),
                               ("openvino", "int8"), ("onnxruntime", "int8")]:
        try:
            runtimes.check_installed(runtime, precision)
        except MissingExtra as exc:
            print(f"{runtime} {precision}: skipped ({exc})")
            continue
        speed, pooled = measure(cfg, runtime, precision, images)
        rows.append((f"{runtime} {precision}", speed, pooled))
    ref_speed, ref = rows[0][1], rows[0][2]
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    print(f"{len(images)} images, batch {cfg.extract.batch_size}, {cfg.spec.name} -> {cfg.spec.head_layer}; "
          f"int8 calibrated on extract.calibration_images={cfg.extract.calibration_images} training images")
    print(f"{'runtime':18s} {'img/s':>7s} {'vs TF':>6s} {'cos min':>8s} {'cos mean':>9s}")
    for name, speed, pooled in rows:
        cos = np.sum(unit(pooled) * unit(ref), axis=1)
        print(f"{name:18s} {speed:7.2f} {speed / ref_speed:5.2f}x {cos.min():8.5f} {cos.mean():9.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

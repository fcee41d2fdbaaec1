"""Benchmark the backbones on this CPU: extraction speed and cache cost per image.

For each ``backbone.name`` at its own input size and default layer, runs the
exact forward function ``vggtl.extract`` uses (preprocessing + frozen base,
compiled once) over the same images, pre-decoded in memory, and prints:
images per second (compute only, after one warm-up batch), the base's
parameter count, and the stored feature size per image (float16).

The weights are random (``backbone.weights: null``): a convolution costs the
same whatever its weights, and only VGG16's ImageNet weights are available
offline. Accuracy is therefore NOT measured here.

Usage (from the repository root, ../shared beside it):

    python scripts/bench_backbones.py [--data ../shared/datasets/clipart8] [--images 128]
        [--batch-size 16] [--backbones vgg16,resnet50,...]

Everything is printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GIANT_PIXELS = 50_000_000


def image_paths(root: Path, n: int) -> list[Path]:
    """The first ``n`` images of ``root`` in sorted order, giants excluded
    (their decode time is not what this benchmark is about)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    paths = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        with Image.open(path) as im:
            if im.width * im.height <= GIANT_PIXELS:
                paths.append(path)
        if len(paths) == n:
            break
    return paths


def bench(name: str, paths: list[Path], batch_size: int, root: Path) -> dict:
    from vggtl import config
    from vggtl.backbones import build
    from vggtl.backbones.resolve import random_weights
    from vggtl.features import pipeline

    cfg = config.from_dict(
        {"name": "bench", "data": {"root": str(root)}, "backbone": {"name": name, "weights": None},
         "extract": {"batch_size": batch_size}},
        "bench_backbones",
    )
    spec = cfg.spec
    size = spec.image_size
    images = np.stack([spec.decode.decode(p) for p in paths])
    weights = random_weights(cfg.seed)
    forward = pipeline.make_forward(cfg, weights)
    forward(images[:batch_size])  # trace and warm up once
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        [f.numpy() for f in forward(images[i : i + batch_size]).values()]
    seconds = time.perf_counter() - start
    base = build.build_base(spec, weights, cfg.seed)
    shape = spec.feature_shape(spec.head_layer)
    return {
        "name": name,
        "size": size,
        "layer": spec.head_layer,
        "shape": shape,
        "img_per_s": len(images) / seconds,
        "params_m": base.count_params() / 1e6,
        "kb_per_image": int(np.prod(shape)) * 2 / 1024,
    }


def main(argv=None) -> int:
    from vggtl import tfquiet
    from vggtl.backbones import registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "clipart8")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbones", default=",".join(registry.ARCHITECTURES))
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"--data {args.data}: no such directory")
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry.ARCHITECTURES]
    if unknown:
        sys.exit(f"--backbones: unknown {', '.join(unknown)}; choose from {', '.join(registry.ARCHITECTURES)}")
    tfquiet.load()
    paths = image_paths(args.data, args.images)
    print(f"{len(paths)} images from {args.data}, batch {args.batch_size}, compute only, random weights")
    print(f"{'backbone':14s} {'size':>4s}  {'layer':18s} {'features':>14s} {'img/s':>7s} {'base params':>12s} {'KB/img (f16)':>13s}")
    for name in names:
        r = bench(name, paths, args.batch_size, args.data)
        print(
            f"{r['name']:14s} {r['size']:4d}  {r['layer']:18s} {'x'.join(map(str, r['shape'])):>14s} "
            f"{r['img_per_s']:7.1f} {r['params_m']:10.1f} M {r['kb_per_image']:13.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark feature extraction: overhead vs pure convolutions, warm re-runs, memory.

Measures, on a real image set with the real VGG16 weights at 224x224:

1. cold ``python -m vggtl.extract`` wall time (whole command, fresh cache)
   divided by the compute-only forward time (the same images pre-decoded in
   memory, same batch size, same compiled forward function)   target <= 1.15
2. warm re-run of the whole command on unchanged data / cold   target <= 5%
3. peak RSS of a cold extract on 4x the images / on 1x        target <= 1.2

Usage (from the repository root, ../shared beside it):

    python scripts/bench_extract.py [--data ../shared/datasets/clipart8]
        [--weights ../shared/weights/vgg16_imagenet_notop.weights.h5]
        [--exclude-giants] [--rss-base 100] [--work /tmp/vggtl-bench]

Everything is printed; nothing is asserted. The giants of clipart8 (four
10.5k x 16k PNGs) are included unless --exclude-giants is given.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
GIANT_PIXELS = 50_000_000


def write_config(path: Path, root: Path, cache: Path, batch_size: int) -> Path:
    cfg = {
        "name": "bench",
        "seed": 42,
        "data": {"root": str(root), "image_size": 224},
        "backbone": {"weights": "imagenet"},
        "cache": {"path": str(cache)},
        "extract": {"batch_size": batch_size},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_extract(cfg: Path, env: dict) -> tuple[float, int, str]:
    """Run the whole command in a fresh process; return (wall s, peak RSS KiB, stdout)."""
    cmd = [
        "/usr/bin/time", "-f", "MAXRSS_KB=%M",
        sys.executable, "-m", "vggtl.extract", str(cfg), "--no-progress",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"extract failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rss = int(next(l for l in proc.stderr.splitlines() if l.startswith("MAXRSS_KB=")).split("=")[1])
    return wall, rss, proc.stdout


def copy_dataset(src: Path, dst: Path, exclude_giants: bool) -> int:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    n = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if exclude_giants:
            with Image.open(path) as im:
                if im.width * im.height > GIANT_PIXELS:
                    continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        n += 1
    return n


def replicate(src: Path, dst: Path, copies: int, limit: int) -> int:
    """``limit`` small images x ``copies`` variants, each with distinct content."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    files = []
    for path in sorted(src.rglob("*.png")):
        with Image.open(path) as im:
            if im.width * im.height <= GIANT_PIXELS:
                files.append(path)
    files = files[:limit]
    n = 0
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGBA")
        for c in range(copies):
            variant = im.copy()
            variant.putpixel((0, 0), (c % 256, (c * 7) % 256, 0, 255))  # new bytes, same picture
            target = dst / path.parent.name / f"{path.stem}_{c}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            variant.save(target)
            n += 1
    return n


def compute_only(cfg_path: Path) -> tuple[float, int]:
    """Forward time of the same images, pre-decoded, same batch and function."""
    from vggtl import config, plan
    from vggtl.features import pipeline

    cfg = config.load(cfg_path)
    the_plan = plan.resolve(cfg)
    dataset, weights = the_plan.dataset, the_plan.weights
    decode = cfg.spec.decode.decode
    seen, images = set(), []
    for f in dataset.files:
        if f.sha256 in seen:
            continue
        seen.add(f.sha256)
        try:
            images.append(decode(f.path))
        except Exception:  # noqa: BLE001 - skipped files are skipped by extract too
            pass
    forward = pipeline.make_forward(cfg, weights)
    batch = cfg.extract.batch_size
    [f.numpy() for f in forward(np.stack(images[:batch])).values()]  # trace once, as extract does before timing matters
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        [f.numpy() for f in forward(np.stack(images[i : i + batch])).values()]
    return time.perf_counter() - start, len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/datasets/clipart8"))
    parser.add_argument("--weights", default=str(REPO.parent / "shared/weights/vgg16_imagenet_notop.weights.h5"))
    parser.add_argument("--work", default="/tmp/vggtl-bench")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--exclude-giants", action="store_true")
    parser.add_argument("--rss-base", type=int, default=100, help="images in the 1x set of the memory test")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "VGGTL_VGG16_WEIGHTS": str(Path(args.weights).resolve()), "VGGTL_CACHE_DIR": str(work / "vggtl-cache")}
    os.environ.update(env)

    data = work / "data"
    n = copy_dataset(Path(args.data), data, args.exclude_giants)
    print(f"dataset: {n} files from {args.data}{' (giants excluded)' if args.exclude_giants else ''}")
    cfg = write_config(work / "bench.yaml", data, work / "cache", args.batch_size)

    cold, cold_rss, out = run_extract(cfg, env)
    warm, _, warm_out = run_extract(cfg, env)
    assert "up to date" in warm_out, warm_out
    forward_s, n_images = compute_only(cfg)
    print(out.strip())
    print()
    print(f"cold extract (whole command):   {cold:7.2f} s   peak RSS {cold_rss / 1024:.0f} MiB")
    print(f"compute-only forward:           {forward_s:7.2f} s   ({n_images} images, batch {args.batch_size}, "
          f"{n_images / forward_s:.2f} img/s)")
    print(f"ratio cold / compute-only:      {cold / forward_s:7.3f}   (target <= 1.15)")
    print(f"warm re-run (whole command):    {warm:7.2f} s = {100 * warm / cold:.1f}% of cold   (target <= 5%)")

    if not args.skip_rss:
        rss = {}
        for mult in (1, 4):
            d = work / f"rss{mult}"
            count = replicate(Path(args.data), d / "data", mult, args.rss_base)
            c = write_config(d / "bench.yaml", d / "data", d / "cache", args.batch_size)
            wall, rss[mult], _ = run_extract(c, env)
            print(f"memory test {mult}x: {count} images, {wall:.1f} s, peak RSS {rss[mult] / 1024:.0f} MiB")
        print(f"peak RSS 4x / 1x:               {rss[4] / rss[1]:7.3f}   (target <= 1.2)")
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rebuild data/demo/ from ../shared/datasets/clipart8 (public domain clip art).

Takes the first N images of each class (sorted by name, skipping the four
10k-pixel giants), downscales them to at most MAX_SIDE pixels keeping their
Pillow mode (RGBA, P, LA: the demo exercises alpha compositing), and saves
optimised PNGs. Run from the repository root:

    python scripts/make_demo_data.py [--source ../shared/datasets/clipart8] [--per-class 24]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

MAX_SIDE = 224


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/datasets/clipart8")
    parser.add_argument("--dest", default="data/demo")
    parser.add_argument("--per-class", type=int, default=24)
    args = parser.parse_args(argv)
    source, dest = Path(args.source), Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        out = dest / class_dir.name
        out.mkdir(parents=True)
        taken = 0
        for path in sorted(class_dir.glob("*.png")):
            if taken == args.per_class:
                break
            with Image.open(path) as im:
                if im.width * im.height > 20_000_000:
                    continue  # the giants: a demo must stay small and fast
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA")
                im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
                im.save(out / path.name, optimize=True)
            taken += 1
    total = sum(f.stat().st_size for f in dest.rglob("*.png"))
    print(f"wrote {sum(1 for _ in dest.rglob('*.png'))} images, {total / 1e6:.2f} MB, to {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

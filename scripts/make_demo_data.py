"""Rebuild data/demo/ from ../shared/datasets/clipart8 (public domain clip art).

Takes the first N images of each class (sorted by name, skipping the four
10k-pixel giants), downscales them to at most MAX_SIDE pixels keeping their
Pillow mode (RGBA, P, LA: the demo exercises alpha compositing), and saves
optimised PNGs. The next --holdout images of each class go to
data/demo-holdout/: images the demo model never sees, for the README's first
predict example. Run from the repository root:

    python scripts/make_demo_data.py [--source ../shared/datasets/clipart8] [--per-class 24] [--holdout 2]
    python scripts/make_demo_data.py --holdout-only      # rebuild data/demo-holdout/ alone
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

from PIL import Image

MAX_SIDE = 224


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/datasets/clipart8")
    parser.add_argument("--dest", default="data/demo")
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--holdout-dest", default="data/demo-holdout")
    parser.add_argument("--holdout", type=int, default=2)
    parser.add_argument("--holdout-only", action="store_true", help="leave --dest as it is")
    args = parser.parse_args(argv)
    source = Path(args.source)
    targets = [] if args.holdout_only else [Path(args.dest)]
    targets.append(Path(args.holdout_dest))
    for target in targets:
        if target.exists():
            shutil.rmtree(target)
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        small = [p for p in sorted(class_dir.glob("*.png")) if not _giant(p)]
        picks = [(Path(args.dest), small[: args.per_class]), (Path(args.holdout_dest), small[args.per_class : args.per_class + args.holdout])]
        for dest, paths in picks:
            if dest in targets:
                for path in paths:
                    _save_small(path, dest / class_dir.name / path.name)
    for dest in targets:
        total = sum(f.stat().st_size for f in dest.rglob("*.png"))
        print(f"wrote {sum(1 for _ in dest.rglob('*.png'))} images, {total / 1e6:.2f} MB, to {dest}")
    return 0


def _giant(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we only read the size
        with Image.open(path) as im:
            return im.width * im.height > 20_000_000  # the giants: a demo must stay small and fast


def _save_small(path: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as im:
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
        im.save(out, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())

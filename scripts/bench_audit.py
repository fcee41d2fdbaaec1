"""How well does `vggtl audit` find flipped labels? Scored against the truth.

For each seed: a copy of the dataset (hard links where possible) with a
fraction of its labels flipped at random (each flipped image moved to a
uniformly drawn other class folder), extracted (the copy's images are the
same files, so a shared cache computes nothing new), audited without the
learning curve, and scored: of the k flipped images, how many are among the
first k and the first 2k `label` rows of issues.csv (the order a user reads).

    python scripts/bench_audit.py configs/clipart8.yaml --rate 0.05 --seeds 0 1 2 3 4
    python scripts/bench_audit.py configs/clipart8.yaml --rate 0.10 --work /tmp/audit-bench

Also: --plant N copies N images, resized to 90% and re-encoded as JPEG, into
another class and reports whether each pair is listed as a duplicate with two
labels. Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vggtl import config  # noqa: E402
from vggtl.audits.run import run as audit  # noqa: E402
from vggtl.data import scan  # noqa: E402
from vggtl.extract import run as extract  # noqa: E402


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def noisy_copy(root: Path, out: Path, rate: float, seed: int) -> dict[str, str]:
    """Copy the class-folder tree ``root`` to ``out`` with ``rate`` of the labels
    flipped; returns ``{relpath in out: true class}`` of the flipped images."""
    dataset = scan(root, (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"), workers=4)
    names, files = dataset.class_names, sorted(dataset.files, key=lambda f: f.relpath)
    rng = np.random.default_rng(seed)
    flipped_rows = set(rng.choice(len(files), int(round(rate * len(files))), replace=False).tolist())
    truth = {}
    shutil.rmtree(out, ignore_errors=True)
    for row, f in enumerate(files):
        label = f.label
        if row in flipped_rows:
            label = int(rng.choice([c for c in range(len(names)) if c != f.label]))
        target = out / names[label] / Path(f.relpath).name
        if target.exists():
            target = target.with_name(f"flipped_{target.name}")
        link_or_copy(f.path, target)
        if label != f.label:
            truth[target.relative_to(out).as_posix()] = names[f.label]
    return truth


def plant_duplicates(root: Path, out: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """A copy of ``root`` with ``count`` images resized to 90% and re-encoded as
    JPEG into another class; returns the (original, copy) relative paths."""
    from PIL import Image

    dataset = scan(root, (".png", ".jpg", ".jpeg"), workers=4)
    names, files = dataset.class_names, sorted(dataset.files, key=lambda f: f.relpath)
    shutil.rmtree(out, ignore_errors=True)
    for f in files:
        link_or_copy(f.path, out / f.relpath)
    rng = np.random.default_rng(seed)
    small = [f for f in files if f.path.stat().st_size < 5_000_000]  # not the giants: a copy of them takes minutes
    planted = []
    for f in (small[i] for i in rng.choice(len(small), count, replace=False)):
        other = names[int(rng.choice([c for c in range(len(names)) if c != f.label]))]
        copy = f"{other}/copy_of_{Path(f.relpath).stem}.jpg"
        with Image.open(f.path) as im:
            rgba = im.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            rgb.resize((max(1, rgb.width * 9 // 10), max(1, rgb.height * 9 // 10))).save(out / copy, quality=85)
        planted.append((f.relpath, copy))
    return planted


def audited(config_path: str, root: Path, work: Path, name: str) -> tuple[list[dict], float, float]:
    overrides = [f"data.root={root}", f"cache.path={work / 'cache'}", f"output.dir={work / 'experiments'}",
                 f"name={name}", "audit.learning_curve=false"]
    cfg = config.load(config_path, overrides)
    started = time.perf_counter()
    extract(cfg, progress=False)
    extracted = time.perf_counter() - started
    started = time.perf_counter()
    result = audit(cfg, log=lambda line: None)
    return result.rows, extracted, time.perf_counter() - started


def score(rows: list[dict], truth: dict[str, str]) -> tuple[float, float]:
    order = [r["path"] for r in rows if r["kind"] == "label"]
    k = len(truth)
    return sum(p in truth for p in order[:k]) / k, sum(p in truth for p in order[: 2 * k]) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--plant", type=int, default=0, help="also plant N resized JPEG copies in other classes")
    parser.add_argument("--work", type=Path, default=Path("experiments/bench-audit"))
    args = parser.parse_args()
    root = Path(config.load(args.config).data.root)
    results = []
    for seed in args.seeds:
        data = args.work / f"data-{args.rate:g}-{seed}"
        truth = noisy_copy(root, data, args.rate, seed)
        rows, extracted, seconds = audited(args.config, data, args.work, "bench-audit")
        if not truth:  # --rate 0 (e.g. with --plant alone): nothing to score
            print(f"rate {args.rate:g} seed {seed}: no label flipped (audit {seconds:.1f} s)", flush=True)
            continue
        top_k, top_2k = score(rows, truth)
        results.append((top_k, top_2k))
        print(f"rate {args.rate:g} seed {seed}: {len(truth)} flipped; first k label rows hold {top_k:.1%}, first 2k "
              f"{top_2k:.1%} (extract {extracted:.1f} s, audit {seconds:.1f} s)", flush=True)
    if results:
        print(f"mean over seeds {args.seeds}: first k {statistics.mean(r[0] for r in results):.1%}, "
              f"first 2k {statistics.mean(r[1] for r in results):.1%}")
    if args.plant:
        data = args.work / "data-planted"
        planted = plant_duplicates(root, data, args.plant, seed=args.seeds[0])
        rows, _, _ = audited(args.config, data, args.work, "bench-audit")
        found = {frozenset((r["path"], r["other"])) for r in rows if r["kind"] == "duplicate" and r["given"] != r["suggested"]}
        for original, copy in planted:
            hit = frozenset((original, copy)) in found
            cos = next((r["score"] for r in rows if {r["path"], r["other"]} == {original, copy}), None)
            print(f"planted {copy} (from {original}): {'reported as a duplicate with two labels' if hit else 'NOT reported'}"
                  f"{f' (cosine {cos})' if cos is not None else ''}")
        print(json.dumps({"planted": len(planted), "reported": sum(frozenset(p) in found for p in planted)}))


if __name__ == "__main__":
    main()

"""Measure unknown detection on real out-of-scope images, through the shipped path.

    VGGTL_CACHE_DIR=... python scripts/bench_unknown.py --sets SETS --work DIR [--seeds 0 1 2]
        [--runtime openvino --precision int8]

``SETS`` is what ``scripts/make_unknown_sets.py`` assembled (tuxphoto/,
photos/, symbols/); clipart8 comes from ``../shared/datasets/clipart8``.
Two models are trained with the real VGG16 weights (``extract`` + ``train``,
``predict.unknown.keep`` 0.95): a clip-art model (clipart8) and a photo model
(tuxphoto). Each is shown its own test images and the other sets through
``vggtl.predict.predict_paths`` -- the score and decision ``vggtl predict``
prints -- and the table gives, per (model, out-of-scope set): AUROC of the
shipped score and of the maximum softmax probability (the usual baseline),
the fraction of in-scope test images kept and of out-of-scope images called
unknown at the operating point. Several ``--seeds`` re-split (one
extraction per data set) and report mean and range. ``--runtime`` /
``--precision`` set ``extract.runtime`` / ``extract.precision``: the
artifact then scores with its carried (e.g. int8) base, as predict runs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CLIPART8 = REPO.parent / "shared" / "datasets" / "clipart8"


def models(sets: Path) -> dict:
    """model name -> (its data root, {out-of-scope set: folder})."""
    return {
        "clipart8": (CLIPART8, {"photos": sets / "photos", "tuxphoto": sets / "tuxphoto", "symbols": sets / "symbols"}),
        "tuxphoto": (sets / "tuxphoto", {"clipart8": CLIPART8, "photos": sets / "photos", "symbols": sets / "symbols"}),
    }


def write_config(work: Path, name: str, root: Path, seed: int, extract: dict | None = None) -> Path:
    cfg = {"name": name, "seed": 42, "data": {"root": str(root), "background": "white", "split": {"seed": seed}},
           "backbone": {"name": "vgg16", "weights": "imagenet"}, "cache": {"path": str(work / "cache")},
           "output": {"dir": str(work / "exp"), "gradcam": 0}, **({"extract": extract} if extract else {})}
    path = work / f"{name}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def scores(artifact, groups: dict) -> dict:
    """``{group: (unknown scores, unknown flags, top probabilities)}`` of each group's
    paths, through predict (one predictor for all)."""
    from vggtl.predict import predict_paths

    paths = [p for group in groups.values() for p in group]
    by_path = {r["path"]: r for r in predict_paths(artifact, paths, top_k=1) if "error" not in r}
    out = {}
    for name, group in groups.items():
        rows = [by_path[str(p)] for p in group if str(p) in by_path]
        out[name] = (np.array([r["unknown_score"] for r in rows]), np.array([r["unknown"] for r in rows]),
                     np.array([r["top"][0][1] for r in rows]))
    return out


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif"))


def measure(artifact: Path, oos: dict) -> dict:
    from sklearn.metrics import roc_auc_score

    with open(artifact / "predictions.csv", newline="", encoding="utf-8") as fh:
        root = Path(yaml.safe_load((artifact / "config.yaml").read_text())["data"]["root"])
        test = [root / r["path"] for r in csv.DictReader(fh) if r["split"] == "test"]
    scored = scores(artifact, {"test": test, **{name: images(folder) for name, folder in oos.items()}})
    s_in, u_in, p_in = scored["test"]
    out = {}
    for name in oos:
        s_out, u_out, p_out = scored[name]
        y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        out[name] = {"n_in": len(s_in), "n_out": len(s_out), "auroc": roc_auc_score(y, np.r_[s_in, s_out]),
                     "auroc_msp": roc_auc_score(y, -np.r_[p_in, p_out]), "kept_in": float(np.mean(~u_in)),
                     "rejected_out": float(np.mean(u_out))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", default=["clipart8", "tuxphoto"])
    parser.add_argument("--runtime", default="tensorflow", help="extract.runtime (default: tensorflow)")
    parser.add_argument("--precision", default="fp32", help="extract.precision (default: fp32)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from vggtl import config as config_mod, extract, train

    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models:
        root, oos = models(args.sets)[name]
        for seed in args.seeds:
            extract_section = {"runtime": args.runtime, "precision": args.precision} if args.runtime != "tensorflow" else None
            cfg = config_mod.load(write_config(args.work, name, root, seed, extract_section))
            if seed == args.seeds[0]:
                extract.run(cfg)
            artifact = train.run(cfg).path
            for oos_name, row in measure(artifact, oos).items():
                results.setdefault((name, oos_name), []).append(row)
    print("\nmodel     out-of-scope   n_in  n_out  AUROC (range)        AUROC max-softmax  test kept  out rejected")
    table = {}
    for (name, oos_name), rows in results.items():
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        low, high = min(r["auroc"] for r in rows), max(r["auroc"] for r in rows)
        table[f"{name} vs {oos_name}"] = {**mean, "auroc_min": low, "auroc_max": high, "seeds": args.seeds}
        print(f"{name:9s} {oos_name:13s} {mean['n_in']:5.0f} {mean['n_out']:6.0f}  {mean['auroc']:.3f} ({low:.3f}-{high:.3f})"
              f"  {mean['auroc_msp']:17.3f}  {100 * mean['kept_in']:8.1f}%  {100 * mean['rejected_out']:10.1f}%")
    (args.work / "bench_unknown.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

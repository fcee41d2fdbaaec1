"""Compare head settings on an existing feature store (how the defaults were chosen).

Trains each candidate head on the cached features of CONFIG's store for
several training seeds (the split stays fixed: it comes from CONFIG's seed)
and prints val/test accuracy mean ± std. Run ``python -m vggtl.extract CONFIG``
first. Example:

    python scripts/compare_heads.py configs/clipart8.yaml --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

from vggtl import config
from vggtl.features import pipeline
from vggtl.features.store import FeatureStore
from vggtl.training import fit

CANDIDATES = {
    "seed recipe: flatten, 256, dropout .5": {"head": {"pooling": "flatten", "units": [256], "dropout": 0.5, "standardize": False}},
    "flatten, 256, dropout .5, standardized": {"head": {"pooling": "flatten", "units": [256], "dropout": 0.5}},
    "avg, 256, dropout .5": {"head": {"pooling": "avg", "units": [256], "dropout": 0.5, "standardize": False}},
    "avg, 256, dropout .5, standardized": {"head": {"pooling": "avg", "units": [256], "dropout": 0.5}},
    "max, 256, dropout .5, standardized": {"head": {"pooling": "max", "units": [256], "dropout": 0.5}},
    "avg, linear softmax, dropout .5, standardized": {"head": {"pooling": "avg", "units": [], "dropout": 0.5}},
    "avg, 512, dropout .5, standardized, l2 1e-3": {"head": {"pooling": "avg", "units": [512], "dropout": 0.5, "l2": 0.001}},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    base = config.load(args.config)
    path = pipeline.locate_store(base, allow_download=False).path
    with FeatureStore(path) as fs:
        splits = {s: fit.load_split(fs, s) for s in ("train", "val", "test")}
        n_classes = len(fs.class_names)
        print(f"store {path}: train {len(splits['train'][2])}, val {len(splits['val'][2])}, test {len(splits['test'][2])}")
        for label, overrides in CANDIDATES.items():
            scores = {"val": [], "test": []}
            for seed in args.seeds:
                mapping = copy.deepcopy(base.to_dict())
                for section, values in overrides.items():
                    mapping[section].update(values)
                mapping["seed"] = seed
                cfg = config.from_dict(mapping)
                head, _ = fit.fit_head(cfg, splits["train"][1][None], splits["train"][2], splits["val"][1], splits["val"][2], n_classes)
                for split in ("val", "test"):
                    probs = head.predict(splits[split][1], verbose=0)
                    scores[split].append(float(np.mean(probs.argmax(1) == splits[split][2])))
            print(
                f"{label:48s} val {np.mean(scores['val']):.3f} ± {np.std(scores['val']):.3f}   "
                f"test {np.mean(scores['test']):.3f} ± {np.std(scores['test']):.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

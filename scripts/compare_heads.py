"""Head alone, linear probe, and their average over many splits (how the default head was chosen).

For each split seed, trains the default head exactly as ``vggtl train`` does
(pooled once, compiled epochs, early stopping) on the cached features of
CONFIG's store, and prints test accuracy of the dense head alone, the linear
probe baseline, and the two averaged (the default, ``head.probe: true``),
with the epochs and seconds of each training. ``--set KEY=VALUE`` overrides
the config as in ``vggtl train``. Run ``python -m vggtl.extract CONFIG`` (with
the same ``--set``) first. Examples:

    python scripts/compare_heads.py configs/clipart8.yaml --seeds 0 1 2 3 4 5 6 7 8 9
    python scripts/compare_heads.py configs/clipart8-fast.yaml --seeds 0 1 2 3 4 --set head.pooling=avgmax_sqrt
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vggtl import config, plan
from vggtl.training import baselines, fit
from vggtl.training import run as training_run


def one_seed(path: str, seed: int, sets=()) -> dict:
    cfg = config.load(path, [*sets, f"seed={seed}", "head.probe=true"])
    fs, _ = training_run.open_current_store(plan.resolve(cfg))
    try:
        splits = training_run.load_splits(fs)
        train, val, test = splits["train"], splits["val"], splits["test"]
        start = time.perf_counter()
        head, history = fit.train_head(cfg, fs, train, val)
        seconds = time.perf_counter() - start
        def acc(model):
            return float(np.mean(model.predict(test.x, verbose=0).argmax(1) == test.y))
        return {
            "sizes": (len(train.y), len(val.y), len(test.y)),
            "head": acc(head.get_layer("head")),
            "probe": baselines.linear_probe(fs, cfg.seed)["test_accuracy"],
            "average": acc(head),
            "epochs": len(history["loss"]),
            "stopped": history["stopped_early"],
            "seconds": seconds,
        }
    finally:
        fs.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        r = one_seed(args.config, seed, args.sets)
        rows.append(r)
        print(f"seed {seed}: train/val/test {r['sizes']}  head {r['head']:.3f}  probe {r['probe']:.3f}  "
              f"average {r['average']:.3f}  ({r['epochs']} epochs, early stop {r['stopped']}, {r['seconds']:.1f} s)", flush=True)
    for key in ("head", "probe", "average"):
        values = np.array([r[key] for r in rows])
        worst = (values - np.array([r["probe"] for r in rows])).min()
        print(f"{key:8s} test {values.mean():.3f} ± {values.std():.3f}  (first five seeds {values[:5].mean():.3f})  "
              f"worst vs probe {100 * worst:+.1f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

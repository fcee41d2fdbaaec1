"""Which frozen-feature representation a linear probe separates best (an accuracy study).

For each ``data.resize`` policy given, decodes every image of CONFIG's dataset
exactly as ``vggtl.extract`` would (``vggtl.data.DecodeSettings``), runs the
frozen base once on the images and once on their left-right mirror images,
keeping ``block4_pool`` and ``block5_pool``, and pools each map by global
average and global max. Then, for every combination of

    layers  block5 | block4 + block5   (pooled vectors concatenated)
    pooling avg | avgmax
    power   none | sqrt                (square root of the pooled vector, exact)
    flip    none | avg                 (pooled vectors of image and mirror averaged)

it prints the accuracy of a logistic regression on the standardized vectors
(scikit-learn, C = 1):

* ``cv``: stratified 5-fold CV over all images, repeated ``--repeats`` times;
* ``test``: trained on train + val, scored on test, mean over ``--seeds``
  (the split rule ``vggtl train`` uses for ``data.split.seed``).

It measures representations, not the default head; ``scripts/compare_heads.py``
measures heads on one store. Everything is printed, nothing asserted. Usage
(from the repository root, ../shared beside it; about 2 minutes per policy on
2 cores with VGGTL_VGG16_WEIGHTS set):

    python scripts/feature_study.py configs/clipart8-fast.yaml --policies stretch pad trim_pad
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

LAYERS = ("block4_pool", "block5_pool")
BATCH = 16


def pooled_views(cfg, dataset, weights, policy: str) -> dict:
    """``{(layer, flipped): (N, 2C) [avg | max] pooled vectors}`` of every file, decoded with ``policy``."""

    from vggtl.backbones import build
    from vggtl.training import heads

    decode = dataclasses.replace(cfg.spec.decode, resize=policy)
    # The script flips the images itself (the "flip" column): the base alone, whatever CONFIG's mirror_average.
    spec = dataclasses.replace(cfg.spec, decode=decode, mirror_average=False)
    with ThreadPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(decode.decode, [f.path for f in dataset.files])))
    model = build.feature_model(spec, weights, list(LAYERS), cfg.seed)
    out = {}
    for flipped in (False, True):
        batches = [[] for _ in LAYERS]
        for start in range(0, len(images), BATCH):
            x = images[start : start + BATCH]
            maps = model.predict_on_batch(x[:, :, ::-1] if flipped else x)
            for i, m in enumerate(maps):
                batches[i].append(heads.pool_numpy(m, "avgmax"))
        for layer, parts in zip(LAYERS, batches):
            out[layer, flipped] = np.concatenate(parts)
    return out


def representation(views: dict, layers, pooling: str, power: str, flip: str) -> np.ndarray:
    parts = []
    for layer in layers:
        v = (views[layer, False] + views[layer, True]) / 2 if flip == "avg" else views[layer, False]
        v = v[:, : v.shape[1] // 2] if pooling == "avg" else v
        parts.append(np.sqrt(v) if power == "sqrt" else v)  # pooled ReLU maps are >= 0
    return np.concatenate(parts, axis=1)


def probe_accuracy(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(max_iter=3000).fit(scaler.transform(x_train), y_train)
    return float(np.mean(model.predict(scaler.transform(x_test)) == y_test))


def cross_validated(x, y, repeats: int) -> float:
    from sklearn.model_selection import StratifiedKFold

    scores = [
        probe_accuracy(x[tr], y[tr], x[te], y[te])
        for r in range(repeats)
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=r).split(x, y)
    ]
    return float(np.mean(scores))


def main(argv=None) -> int:
    from vggtl import config, plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--policies", nargs="+", default=["stretch", "trim_pad"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    cfg = config.load(args.config)
    the_plan = plan.resolve(cfg)
    dataset, weights = the_plan.dataset, the_plan.weights
    y = np.array([f.label for f in dataset.files])
    test_masks = []
    for seed in args.seeds:  # the same files, split as each seed's run would split them
        seed_plan = dataclasses.replace(the_plan, cfg=config.with_overrides(cfg, {"data.split.seed": seed}, "--seeds"))
        test_masks.append(np.array([f.split == "test" for f in seed_plan.split().files]))
    print(f"{len(y)} images, {len(dataset.class_names)} classes; test = train+val -> test over split seeds {args.seeds}")
    print(f"{'resize':9s} {'layers':13s} {'pooling':7s} {'power':5s} {'flip':4s}  cv(5x{args.repeats})  test(mean)")
    for policy in args.policies:
        started = time.perf_counter()
        views = pooled_views(cfg, dataset, weights, policy)
        print(f"# {policy}: features in {time.perf_counter() - started:.0f} s", flush=True)
        for layers, pooling, power, flip in itertools.product((LAYERS[1:], LAYERS), ("avg", "avgmax"), ("none", "sqrt"), ("none", "avg")):
            x = representation(views, layers, pooling, power, flip)
            test = np.mean([probe_accuracy(x[~m], y[~m], x[m], y[m]) for m in test_masks])
            names = "+".join(layer.split("_")[0] for layer in layers)
            print(f"{policy:9s} {names:13s} {pooling:7s} {power:5s} {flip:4s}  {cross_validated(x, y, args.repeats):.3f}      {test:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

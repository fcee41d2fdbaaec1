"""Benchmark fine-tuning and augmentation on the feature store.

On a real dataset with the real VGG16 weights and a fixed split, measures:

1. ``epoch``: phase-2 epoch time from stored boundary activations (vggtl) vs
   the same fine-tuning done end to end on decoded images, the Keras-guide
   way (preprocessing + VGG16 with the same blocks unfrozen + the same
   phase-1 head, same batch size, same optimizer), and the test accuracy of
   both after the same number of epochs.                    target >= 4x
2. ``table``: test accuracy mean ± std over training seeds (split fixed) of
   head only; head + views; fine-tune; fine-tune + views.
3. ``extract``: cold extraction with ``augment.views: K`` vs plain (both
   with the fine-tuning boundary layer), and a warm re-run. target ~ (K+1)x

Usage (repository root, ../shared beside it):

    python scripts/bench_finetune.py [--config configs/clipart8-fast.yaml] [--views 4]
        [--seeds 1 2 3] [--parts epoch table extract] [--work /tmp/vggtl-bench-ft]

Everything is printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def variant(base, seed: int, blocks: int, views: int, finetune_epochs: int):
    from vggtl import config

    mapping = copy.deepcopy(base.to_dict())
    mapping["seed"] = seed
    mapping["finetune"]["blocks"] = blocks
    mapping["finetune"]["epochs"] = finetune_epochs
    mapping["augment"]["views"] = views
    return config.from_dict(mapping)


def open_store(cfg):
    from vggtl import plan
    from vggtl.features.store import FeatureStore

    where = plan.resolve(cfg, allow_download=False).store
    return FeatureStore(where.path), where.weights


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


def run_variant(fs, weights, cfg, n_classes) -> float:
    """Phase 1 (+ phase 2) on the store exactly as vggtl.train does; test accuracy."""
    from vggtl.training import fit as train
    from vggtl.backbones import build

    rows = fs.split_rows("train")
    y_train = fs.labels[rows]
    _, x_val, y_val = train.load_split(fs, "val")
    _, x_test, y_test = train.load_split(fs, "test")
    head, _ = train.train_head(cfg, fs, train.Split(rows, y_train), train.Split(fs.split_rows("val"), y_val))
    if not cfg.finetune.blocks:
        return accuracy(head, x_test, y_test)
    boundary = cfg.spec.boundary_layer
    base = build.build_base(cfg.spec, weights, cfg.seed)
    bank = train.training_bank(fs, rows, boundary, cfg.augment.views)
    _, xb_val, _ = train.load_split(fs, "val", boundary)
    _, xb_test, _ = train.load_split(fs, "test", boundary)
    tuned, _, _ = train.finetune(cfg, base, head, bank, y_train, xb_val, y_val, n_classes)
    return accuracy(tuned, xb_test, y_test)


def part_table(base, seeds, views, finetune_epochs) -> None:
    fs, weights = open_store(variant(base, base.seed, 1, views, finetune_epochs))
    n_classes = len(fs.class_names)
    print(f"\n== test accuracy over training seeds {seeds} (split fixed by the store; "
          f"train {len(fs.split_rows('train'))}, test {len(fs.split_rows('test'))})")
    for label, blocks, v in (
        ("head only", 0, 0),
        (f"head + augment.views: {views}", 0, views),
        ("fine-tune blocks: 1", 1, 0),
        (f"fine-tune blocks: 1 + views: {views}", 1, views),
    ):
        scores = []
        start = time.perf_counter()
        for seed in seeds:
            scores.append(run_variant(fs, weights, variant(base, seed, blocks, v, finetune_epochs), n_classes))
        print(f"{label:36s} {np.mean(scores):.3f} ± {np.std(scores):.3f}   ({', '.join(f'{s:.3f}' for s in scores)}; "
              f"{time.perf_counter() - start:.0f} s)", flush=True)


def part_epoch(base, epochs: int) -> None:
    """Phase-2 epochs: stored boundary activations vs end to end on decoded images."""
    import keras

    from vggtl.training import fit as train
    from vggtl.backbones import build
    from vggtl.training import heads

    cfg = variant(base, base.seed, 1, 0, epochs)
    fs, weights = open_store(cfg)
    n_classes = len(fs.class_names)
    rows = fs.split_rows("train")
    y_train = fs.labels[rows]
    _, x_val, y_val = train.load_split(fs, "val")
    from vggtl import config

    head, _ = train.train_head(config.with_overrides(cfg, {"augment.views": 0}, "bench"), fs, train.Split(rows, y_train),
                               train.Split(fs.split_rows("val"), y_val))
    head_weights = head.get_weights()
    onehot = keras.utils.to_categorical(y_train, n_classes)

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t)

    def fit(model, x, x_test):
        train.seed_everything(cfg.seed + 1)
        model.compile(optimizer=heads.make_optimizer(cfg.finetune.optimizer, cfg.finetune.learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        timer = EpochTimer()
        model.fit(x, onehot, epochs=epochs, batch_size=cfg.finetune.batch_size, shuffle=True, callbacks=[timer], verbose=0)
        _, _, y_test = train.load_split(fs, "test")
        return timer.times, accuracy(model, x_test, y_test)

    # vggtl: top block + head on stored block4_pool activations
    base_model = build.build_base(cfg.spec, weights, cfg.seed)
    top = build.top_model(base_model, "block4_pool", "block5_pool")
    for layer in top.layers:
        layer.trainable = True
    inputs = keras.Input(fs.feature_shapes["block4_pool"])
    stored = keras.Model(inputs, head(top(inputs)))
    _, xb_test, _ = train.load_split(fs, "test", "block4_pool")
    stored_times, stored_acc = fit(stored, fs.features(rows, "block4_pool"), xb_test)

    # end to end (Keras guide): decoded images -> preprocessing -> VGG16 (block5 trainable) -> same phase-1 head
    head.set_weights(head_weights)
    fs_root = Path(cfg.data.root)
    decode = lambda r: cfg.spec.decode.decode(fs_root / fs.paths[r])  # noqa: E731
    images = np.stack([decode(r) for r in rows])
    test_images = np.stack([decode(r) for r in fs.split_rows("test")])
    e2e_base = build.build_base(cfg.spec, weights, cfg.seed)
    features = build.feature_model(cfg.spec, weights, "block5_pool", cfg.seed, base=e2e_base)
    features.trainable = True  # recursive: undo feature_model's freeze ...
    for layer in e2e_base.layers:  # ... then freeze all but block5, as the Keras guide does
        layer.trainable = layer.name.startswith("block5")
    img = keras.Input((cfg.data.image_size, cfg.data.image_size, 3))
    e2e = keras.Model(img, head(features(img)))
    trainable = sum(int(np.prod(w.shape)) for w in e2e.trainable_weights)
    e2e_times, e2e_acc = fit(e2e, images, test_images)

    s = np.median(stored_times[1:] or stored_times)
    e = np.median(e2e_times[1:] or e2e_times)
    print(f"\n== phase-2 epoch, {len(rows)} training images, batch {cfg.finetune.batch_size}, {epochs} epochs, "
          f"block5 + head trainable ({trainable:,} params end to end)")
    print(f"stored block4_pool activations: {s:7.2f} s/epoch (median of epochs 2..)  test accuracy {stored_acc:.3f}")
    print(f"end to end on decoded images:   {e:7.2f} s/epoch                        test accuracy {e2e_acc:.3f}")
    print(f"speed-up: {e / s:.1f}x   (target >= 4x)")


def part_extract(config_path: Path, views: int, work: Path) -> None:
    def run(tag, *sets):
        cache = work / f"cache-{tag}"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [sys.executable, "-m", "vggtl.extract", str(config_path), "--no-progress",
               "--set", f"cache.path={cache}", "--set", "finetune.blocks=1", *sum((["--set", s] for s in sets), [])]
        times = []
        for _ in range(2):  # cold, then warm
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                sys.exit(proc.stderr)
            times.append(time.perf_counter() - start)
        return times

    plain = run("plain", "augment.views=0")
    viewed = run("views", f"augment.views={views}")
    print("\n== extraction (whole command, block5_pool + block4_pool stored)")
    print(f"plain:          cold {plain[0]:7.1f} s   warm {plain[1]:.2f} s")
    print(f"views: {views}:       cold {viewed[0]:7.1f} s   warm {viewed[1]:.2f} s")
    print(f"cold ratio: {viewed[0] / plain[0]:.2f}x  (about {views + 1}x expected only for the training share: "
          f"views are made for training images only)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/clipart8-fast.yaml"))
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=3, help="phase-2 epochs timed in part 'epoch'")
    parser.add_argument("--finetune-epochs", type=int, default=20, help="max phase-2 epochs in part 'table'")
    parser.add_argument("--parts", nargs="+", default=["extract", "epoch", "table"], choices=["extract", "epoch", "table"])
    parser.add_argument("--work", default="/tmp/vggtl-bench-ft")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VGGTL_VGG16_WEIGHTS", str(REPO.parent / "shared/weights/vgg16_imagenet_notop.weights.h5"))

    from vggtl import config

    config_path = Path(args.config).resolve()
    base = config.load(config_path)
    if "extract" in args.parts:
        part_extract(config_path, args.views, work)
    # parts below read the store of the config with fine-tuning + views (extract it first)
    subprocess.run([sys.executable, "-m", "vggtl.extract", str(config_path), "--no-progress",
                    "--set", "finetune.blocks=1", "--set", f"augment.views={args.views}"], check=True, capture_output=True)
    if "epoch" in args.parts:
        part_epoch(variant(base, base.seed, 1, args.views, args.epochs), args.epochs)
    if "table" in args.parts:
        part_table(base, args.seeds, args.views, args.finetune_epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

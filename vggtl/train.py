"""``python -m vggtl.train [CONFIG]`` -- train the head on cached features.

Reads the feature store built by ``vggtl.extract`` (refusing one that is out
of date with ``data.root``), trains the dense softmax head with early
stopping on the validation split, evaluates it, fits a linear-probe baseline
on the same split, and publishes a new artifact version with its report.
Same config + same data + same seed gives the same ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from vggtl import artifact, backbone, config, extract, heads, report, tfquiet
from vggtl.data import SPLITS
from vggtl.errors import StoreError, cli_entry
from vggtl.store import FeatureStore

PROBE_MAX_ITER = 2000
# float16 features shift probabilities by ~1e-3; more means the artifact is wrong.
E2E_TOLERANCE = 0.02


def load_split(fs: FeatureStore, split: str):
    rows = fs.split_rows(split)
    return rows, fs.features(rows), fs.labels[rows]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TF and make TF ops deterministic (same metrics every run)."""
    tf = tfquiet.load()
    import keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Inverse-frequency weights (``'balanced'``, as scikit-learn defines it) or None."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes)
    return {i: float(len(labels) / (n_classes * c)) for i, c in enumerate(counts) if c > 0}


def fit_head(cfg: config.Config, x_train, y_train, x_val, y_val, n_classes: int):
    """Train the head with early stopping on val_loss; best weights restored."""
    seed_everything(cfg.seed)  # first: also imports TensorFlow quietly
    import keras

    stats = heads.standardization_stats(x_train, cfg.head.pooling) if cfg.head.standardize else None
    head = heads.build_head(x_train.shape[1:], n_classes, cfg.head, stats=stats)
    head.compile(
        optimizer=heads.make_optimizer(cfg.train.optimizer, cfg.train.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
        metrics=["accuracy"],
    )
    callbacks = []
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.train.early_stopping_patience, restore_best_weights=True
            )
        )
    history = head.fit(
        x_train,
        keras.utils.to_categorical(y_train, n_classes),
        validation_data=(x_val, keras.utils.to_categorical(y_val, n_classes)),
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        class_weight=class_weights(y_train, n_classes, cfg.train.class_weight),
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    return head, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def split_metrics(y_true, probs, class_names) -> dict:
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    return {
        "accuracy": round(float(np.mean(y_pred == y_true)), 6),
        "loss": round(loss, 6),
        "macro_f1": round(float(np.mean(f1)), 6),
        "n": int(len(y_true)),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def linear_probe(fs: FeatureStore, seed: int) -> dict:
    """Baseline: logistic regression on standardized global-average-pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pooled = {}
    for split in SPLITS:
        rows = fs.split_rows(split)
        # Pool chunk by chunk: the probe never needs all full feature maps in RAM.
        chunks = [feats.reshape(len(feats), -1, feats.shape[-1]).mean(axis=1) for _, feats in fs.iter_batches(rows)]
        pooled[split] = (np.concatenate(chunks) if chunks else np.zeros((0, fs.feature_shape[-1])), fs.labels[rows])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed))
    model.fit(*pooled["train"])
    return {f"{split}_accuracy": round(float(model.score(*pooled[split])), 6) for split in ("val", "test")}


def end_to_end_model(cfg: config.Config, weights: backbone.ResolvedWeights, head):
    """raw RGB uint8 images -> probabilities: preprocessing + frozen base + head."""
    import keras

    size = cfg.data.image_size
    features = backbone.feature_model(weights, size, cfg.backbone.layer, cfg.seed)
    inputs = keras.Input((size, size, 3), name="image")
    return keras.Model(inputs, head(features(inputs)), name=f"vggtl_{cfg.name}")


def check_end_to_end(model, fs: FeatureStore, cfg: config.Config, head, dataset_root, n: int = 8) -> float:
    """Max |p_model - p_head(cached)| on a few test images: proves the artifact
    computes what was trained and evaluated (fp16 cache gives ~1e-3)."""
    from vggtl.data import UndecodableImage, decode_image

    rows = fs.split_rows("test")[:n]
    images, kept = [], []
    for row in rows:
        try:
            images.append(
                decode_image(dataset_root / fs.paths[row], cfg.data.image_size, cfg.data.resize, cfg.background_rgb, cfg.data.max_pixels)
            )
            kept.append(row)
        except UndecodableImage:
            continue
    if not kept:
        return 0.0
    direct = model.predict(np.stack(images), verbose=0)
    cached = head.predict(fs.features(kept), verbose=0)
    return float(np.max(np.abs(direct - cached)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vggtl train", description=__doc__.splitlines()[0])
    config.add_arguments(parser, config_required=False)
    args = parser.parse_args(argv)
    cfg = config.from_args(args)
    started = time.perf_counter()

    # -- the store must exist and match the data as it is now
    dataset = extract.scan_dataset(cfg)
    store_path, settings, weights = extract.locate_store(cfg)
    if not store_path.is_file():
        raise StoreError(f"no feature store for this config at {store_path}; run: python -m vggtl.extract {args.config or 'CONFIG'}")
    fs = FeatureStore(store_path)
    if fs.data_digest != dataset.digest():
        raise StoreError(
            f"feature store {store_path} is out of date with {cfg.data.root} (images or splits changed); "
            f"run python -m vggtl.extract {args.config or 'CONFIG'} first"
        )
    class_names = fs.class_names
    n_classes = len(class_names)

    # -- data: cached features for each split
    _, x_train, y_train = load_split(fs, "train")
    val_rows, x_val, y_val = load_split(fs, "val")
    test_rows, x_test, y_test = load_split(fs, "test")
    print(f"train: {len(y_train)}  val: {len(y_val)}  test: {len(y_test)}  classes: {n_classes}  features: {fs.feature_shape}")

    # -- the head
    head, history = fit_head(cfg, x_train, y_train, x_val, y_val, n_classes)
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if "val_loss" in history else len(history["loss"])
    print(f"trained {len(history['loss'])} epochs (best: {best_epoch})")

    # -- evaluation and baseline
    val_probs = head.predict(x_val, verbose=0)
    test_probs = head.predict(x_test, verbose=0)
    metrics = {
        "val": split_metrics(y_val, val_probs, class_names),
        "test": split_metrics(y_test, test_probs, class_names),
        "baseline": {"linear_probe": linear_probe(fs, cfg.seed)},
        "epochs_trained": len(history["loss"]),
        "best_epoch": best_epoch,
    }
    print(
        f"val accuracy {metrics['val']['accuracy']:.4f}   test accuracy {metrics['test']['accuracy']:.4f}   "
        f"(linear probe: test {metrics['baseline']['linear_probe']['test_accuracy']:.4f})"
    )

    # -- the artifact: end-to-end model + metadata, published atomically
    artifact.clean_stale_staging(cfg.output.dir, cfg.name)
    staging = artifact.begin(cfg.output.dir, cfg.name)
    try:
        model = end_to_end_model(cfg, weights, head)
        model.save(staging / "model.keras")
        e2e_gap = check_end_to_end(model, fs, cfg, head, dataset.root)
        if e2e_gap > E2E_TOLERANCE:
            raise RuntimeError(
                f"internal: the end-to-end model differs from the trained head on cached features by {e2e_gap:.4f}"
            )
        artifact.write_json(staging / "labels.json", class_names)
        config.save(cfg, staging / "config.yaml")
        artifact.write_json(staging / "metrics.json", metrics)
        artifact.write_json(staging / "history.json", history)
        artifact.write_json(
            staging / "manifest.json",
            {
                "data_root": str(dataset.root),
                "layout": dataset.layout,
                "data_digest": dataset.digest(),
                "counts": dataset.counts(),
                "skipped": [{"path": p, "reason": r} for p, r in fs.skipped],
                "files": [
                    {"path": fs.paths[i], "label": class_names[fs.labels[i]], "split": SPLITS[fs.splits[i]]}
                    for i in range(len(fs.paths))
                ],
            },
        )
        artifact.write_json(
            staging / "info.json",
            {
                "format": artifact.FORMAT,
                "format_version": artifact.FORMAT_VERSION,
                "name": cfg.name,
                "seed": cfg.seed,
                "config_digest": cfg.digest(),
                "data_digest": dataset.digest(),
                "store": {"path": str(store_path), "settings": settings},
                "weights": {"source": weights.source, "digest": weights.digest, "random": weights.kind == "random"},
                "image_size": cfg.data.image_size,
                "input": "RGB uint8 (or float 0-255), shape (H, W, 3) = image_size; preprocessing inside the model",
                "end_to_end_check_max_abs_diff": e2e_gap,
                "versions": artifact.versions(),
                "train_seconds": round(time.perf_counter() - started, 1),
            },
        )
        report.write(
            staging,
            cfg=cfg,
            dataset=dataset,
            fs=fs,
            metrics=metrics,
            history=history,
            test_rows=test_rows,
            test_probs=test_probs,
            weights=weights,
        )
        target = artifact.publish(staging)
    except BaseException:
        artifact.abandon(staging)
        raise
    finally:
        fs.close()
    print(f"artifact: {target}")
    print(f"report:   {target / 'report.md'}")
    return 0


main = cli_entry(tfquiet.quiet(main))

if __name__ == "__main__":
    sys.exit(main())

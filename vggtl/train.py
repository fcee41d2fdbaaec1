"""``python -m vggtl.train [CONFIG]`` -- train the head on cached features.

Reads the feature store built by ``vggtl.extract`` (refusing one that is out
of date with ``data.root``), trains the dense softmax head with early
stopping on the validation split, evaluates it, fits a linear-probe baseline
on the same split, and publishes a new artifact version with its report.
Same config + same data + same seed gives the same ``metrics.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from vggtl import config, extract, tfquiet
from vggtl.backbones import build
from vggtl.features import augment
from vggtl.training import artifact, heads, report
from vggtl.data import SPLITS
from vggtl.errors import StoreError, cli_entry
from vggtl.features.store import FeatureStore

PROBE_MAX_ITER = 2000
# float16 features shift probabilities by ~1e-3; more means the artifact is wrong.
E2E_TOLERANCE = 0.02


def load_split(fs: FeatureStore, split: str, layer: str | None = None):
    """(rows, clean float32 features of ``layer``, labels) of one split."""
    rows = fs.split_rows(split)
    return rows, fs.features(rows, layer), fs.labels[rows]


def training_bank(fs: FeatureStore, rows, layer: str | None, views: int) -> np.ndarray:
    """``(views + 1, N, ...)`` float16: the clean features of the training rows,
    then each stored augmented view (float16 halves the RAM of the bank)."""
    clean = fs.features(rows, layer, dtype=np.float16)
    if not views:
        return clean[None]
    shas = fs.clean_keys(rows)
    digest = fs.augment["digest"]
    bank = [clean]
    for view in range(1, views + 1):
        keys = [augment.view_key(sha, digest, view) for sha in shas]
        bank.append(fs.entry_features(fs.entry_rows(keys), layer, dtype=np.float16))
    return np.stack(bank)


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


def view_sampler(bank: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int, seed: int, weights=None):
    """A Keras PyDataset that, each epoch, shuffles the training images and draws
    one version of each -- the clean image or one of its stored views --
    uniformly and reproducibly from (seed, epoch)."""
    import keras

    class ViewSampler(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.onehot = keras.utils.to_categorical(labels, n_classes)
            self.sample_weight = (
                np.array([weights[int(y)] for y in labels], dtype=np.float32) if weights else None
            )
            self._draw()

        def _draw(self):
            rng = np.random.default_rng([seed, self.epoch])
            self.order = rng.permutation(bank.shape[1])
            self.version = rng.integers(0, bank.shape[0], size=bank.shape[1])

        def __len__(self):
            return -(-bank.shape[1] // batch_size)

        def __getitem__(self, i):
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            x = bank[self.version[idx], idx].astype(np.float32)
            if self.sample_weight is None:
                return x, self.onehot[idx]
            return x, self.onehot[idx], self.sample_weight[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._draw()

    return ViewSampler()


def _fit(model, bank, y_train, val_data, n_classes, *, epochs, batch_size, patience, class_weight_mode, seed):
    """fit() on the training bank (clean + views) with early stopping on val_loss."""
    import keras

    callbacks = []
    if patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True))
    weights = class_weights(y_train, n_classes, class_weight_mode)
    x_val, y_val = val_data
    validation = (x_val, keras.utils.to_categorical(y_val, n_classes))
    if bank.shape[0] == 1:  # no views: plain arrays, Keras shuffles
        history = model.fit(
            bank[0].astype(np.float32),
            keras.utils.to_categorical(y_train, n_classes),
            validation_data=validation,
            epochs=epochs,
            batch_size=batch_size,
            class_weight=weights,
            shuffle=True,
            callbacks=callbacks,
            verbose=0,
        )
    else:
        sampler = view_sampler(bank, y_train, n_classes, batch_size, seed, weights)
        history = model.fit(sampler, validation_data=validation, epochs=epochs, callbacks=callbacks, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def fit_head(cfg: config.Config, bank, y_train, x_val, y_val, n_classes: int):
    """Phase 1: train the head on cached features (clean + views); best weights restored."""
    seed_everything(cfg.seed)  # first: also imports TensorFlow quietly
    import keras

    stats = heads.standardization_stats(bank[0].astype(np.float32), cfg.head.pooling) if cfg.head.standardize else None
    head = heads.build_head(bank.shape[2:], n_classes, cfg.head, stats=stats)
    head.compile(
        optimizer=heads.make_optimizer(cfg.train.optimizer, cfg.train.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
        metrics=["accuracy"],
    )
    history = _fit(
        head, bank, y_train, (x_val, y_val), n_classes,
        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
        patience=cfg.train.early_stopping_patience, class_weight_mode=cfg.train.class_weight, seed=cfg.seed,
    )
    return head, history


def finetune(cfg: config.Config, base, head, bank, y_train, x_val, y_val, n_classes: int):
    """Phase 2: train the unfrozen top blocks + head on stored boundary activations.

    ``base`` is the backbone whose top blocks are trained in place (the
    layers are shared with the returned model), so the end-to-end model built
    from ``base`` afterwards carries the fine-tuned weights.
    """
    seed_everything(cfg.seed + 1)
    import keras

    boundary = cfg.stored_layers()[1]
    top = build.top_model(base, boundary, cfg.backbone.layer)
    for layer in top.layers:
        # BatchNormalization (ResNet, Inception, MobileNet) stays frozen: in
        # Keras 3 a frozen BN layer runs in inference mode with its ImageNet
        # statistics, which a few small batches would otherwise overwrite.
        # (Calling the block with training=False does not hold inside fit.)
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input(bank.shape[2:], name=boundary)
    model = keras.Model(inputs, head(top(inputs)), name="finetune")
    model.compile(
        optimizer=heads.make_optimizer(cfg.finetune.optimizer, cfg.finetune.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
        metrics=["accuracy"],
    )
    start = _val_scores(model, x_val, y_val)
    start_weights = model.get_weights()
    history = _fit(
        model, bank, y_train, (x_val, y_val), n_classes,
        epochs=cfg.finetune.epochs, batch_size=cfg.finetune.batch_size,
        patience=cfg.finetune.early_stopping_patience, class_weight_mode=cfg.train.class_weight, seed=cfg.seed + 1,
    )
    # Early stopping restores the best phase-2 epoch, which can still be worse
    # than where phase 2 started: then fine-tuning did not help; keep phase 1.
    # Kept only if the validation cross-entropy falls AND the validation
    # accuracy does not: Keras' val_loss includes the L2 penalties, and a
    # network collapsing towards uniform predictions can lower both it and
    # the cross-entropy of an overconfident phase-1 head while its accuracy
    # drops (seen with a random-weight ResNet50 on clipart8: 0.46 -> 0.16).
    end = _val_scores(model, x_val, y_val)
    kept = end[0] < start[0] and end[1] >= start[1]
    if not kept:
        model.set_weights(start_weights)
    history["val_cross_entropy_before_after"] = [start[0], end[0]]
    history["val_accuracy_before_after"] = [start[1], end[1]]
    return model, history, kept


def _val_scores(model, x_val, y_val) -> tuple[float, float]:
    """(cross-entropy, accuracy) of ``model`` on the validation split."""
    probs = model.predict(x_val, verbose=0)
    return cross_entropy(y_val, probs), float(np.mean(probs.argmax(axis=1) == y_val))


def best_epoch(history: dict) -> int:
    return int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else len(history["loss"])


def cross_entropy(y_true, probs) -> float:
    """Mean cross-entropy of ``probs`` at the true labels (no regularization terms)."""
    eps = 1e-7
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))


def split_metrics(y_true, probs, class_names) -> dict:
    """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    loss = cross_entropy(y_true, probs)
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


def end_to_end_model(cfg: config.Config, weights: build.ResolvedWeights, base, head):
    """raw RGB uint8 images -> probabilities: preprocessing + ``base`` (possibly
    with fine-tuned top blocks) + head."""
    import keras

    size = cfg.data.image_size
    features = build.feature_model(cfg.backbone.name, weights, size, cfg.backbone.layer, cfg.seed, base=base)
    inputs = keras.Input((size, size, 3), name="image")
    return keras.Model(inputs, head(features(inputs)), name=f"vggtl_{cfg.name}")


def check_end_to_end(model, evaluate_cached, fs: FeatureStore, cfg: config.Config, dataset_root, n: int = 8) -> float:
    """Max |p_model - p_cached| on a few test images, where ``evaluate_cached(rows)``
    gives the probabilities the metrics were computed from. Proves the artifact
    computes what was trained and evaluated (the fp16 cache gives ~1e-3)."""
    from vggtl.data import UndecodableImage, decode_image

    images, kept = [], []
    for row in fs.split_rows("test")[:n]:
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
    return float(np.max(np.abs(direct - evaluate_cached(kept))))


def open_current_store(cfg: config.Config, dataset, config_arg) -> tuple[FeatureStore, dict, build.ResolvedWeights]:
    """The store for ``cfg``, refused unless it matches the data and augment settings now."""
    store_path, settings, weights = extract.locate_store(cfg)
    again = f"python -m vggtl.extract {config_arg or 'CONFIG'}"
    if not store_path.is_file():
        raise StoreError(f"no feature store for this config at {store_path}; run: {again}")
    fs = FeatureStore(store_path)
    if fs.data_digest != dataset.digest():
        fs.close()
        raise StoreError(
            f"feature store {store_path} is out of date with {cfg.data.root} (images or splits changed); run {again} first"
        )
    if cfg.augment.views and fs.augment != {"views": cfg.augment.views, "digest": cfg.augment.digest()}:
        fs.close()
        raise StoreError(f"feature store {store_path} holds other augmented views than augment.* asks for; run {again} first")
    return fs, settings, weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vggtl train", description=__doc__.splitlines()[0])
    config.add_arguments(parser, config_required=False)
    args = parser.parse_args(argv)
    cfg = config.from_args(args)
    started = time.perf_counter()

    # -- the store must exist and match the data as it is now
    dataset = extract.scan_dataset(cfg)
    fs, settings, weights = open_current_store(cfg, dataset, args.config)
    store_path = fs.path
    class_names = fs.class_names
    n_classes = len(class_names)

    # -- phase 1 data: cached head-input features (+ augmented views for training)
    train_rows = fs.split_rows("train")
    y_train = fs.labels[train_rows]
    bank = training_bank(fs, train_rows, None, cfg.augment.views)
    val_rows, x_val, y_val = load_split(fs, "val")
    test_rows, x_test, y_test = load_split(fs, "test")
    print(
        f"train: {len(y_train)} (+{cfg.augment.views} views each)  val: {len(y_val)}  test: {len(y_test)}  "
        f"classes: {n_classes}  features: {fs.feature_shape}"
    )

    # -- phase 1: the head
    head, history1 = fit_head(cfg, bank, y_train, x_val, y_val, n_classes)
    del bank
    print(f"phase 1 (head): {len(history1['loss'])} epochs (best: {best_epoch(history1)})")
    val_probs, test_probs = head.predict(x_val, verbose=0), head.predict(x_test, verbose=0)
    phase1 = {
        "val": {"accuracy": split_metrics(y_val, val_probs, class_names)["accuracy"]},
        "test": {"accuracy": split_metrics(y_test, test_probs, class_names)["accuracy"]},
        "epochs_trained": len(history1["loss"]),
        "best_epoch": best_epoch(history1),
    }
    history = {"phase1": history1}
    evaluate_cached = lambda rows: head.predict(fs.features(rows), verbose=0)  # noqa: E731

    # -- phase 2: fine-tune the top blocks on stored boundary activations
    base = build.build_base(cfg.backbone.name, weights, cfg.data.image_size, cfg.seed)
    if cfg.finetune.blocks:
        boundary = cfg.stored_layers()[1]
        bank = training_bank(fs, train_rows, boundary, cfg.augment.views)
        _, xb_val, _ = load_split(fs, "val", boundary)
        _, xb_test, _ = load_split(fs, "test", boundary)
        tuned, history["phase2"], improved = finetune(cfg, base, head, bank, y_train, xb_val, y_val, n_classes)
        del bank
        print(
            f"phase 2 (fine-tune {cfg.finetune.blocks} block(s) from {boundary}): "
            f"{len(history['phase2']['loss'])} epochs (best: {best_epoch(history['phase2'])})"
            + ("" if improved else "; validation cross-entropy/accuracy not better than phase 1's, phase-1 weights kept")
        )
        val_probs, test_probs = tuned.predict(xb_val, verbose=0), tuned.predict(xb_test, verbose=0)
        evaluate_cached = lambda rows: tuned.predict(fs.features(rows, boundary), verbose=0)  # noqa: E731

    # -- evaluation and baseline
    metrics = {
        "val": split_metrics(y_val, val_probs, class_names),
        "test": split_metrics(y_test, test_probs, class_names),
        "baseline": {"linear_probe": linear_probe(fs, cfg.seed)},
        "phase1": phase1,
        "epochs_trained": phase1["epochs_trained"],
        "best_epoch": phase1["best_epoch"],
    }
    if cfg.baseline.scratch:
        from vggtl.training import baselines

        metrics["baseline"]["scratch"] = baselines.train_scratch(cfg, fs, dataset.root)
        print(f"from-scratch CNN baseline: test {metrics['baseline']['scratch']['test_accuracy']:.4f}")
    if cfg.finetune.blocks:
        metrics["phase2"] = {
            "blocks": cfg.finetune.blocks,
            "epochs_trained": len(history["phase2"]["loss"]),
            "best_epoch": best_epoch(history["phase2"]),
            "kept": improved,
        }
    print(
        f"val accuracy {metrics['val']['accuracy']:.4f}   test accuracy {metrics['test']['accuracy']:.4f}   "
        f"(head only: test {phase1['test']['accuracy']:.4f}; "
        f"linear probe: test {metrics['baseline']['linear_probe']['test_accuracy']:.4f})"
    )

    # -- the artifact: end-to-end model + metadata, published atomically
    artifact.clean_stale_staging(cfg.output.dir, cfg.name)
    staging = artifact.begin(cfg.output.dir, cfg.name)
    try:
        model = end_to_end_model(cfg, weights, base, head)
        model.save(staging / "model.keras")
        e2e_gap = check_end_to_end(model, evaluate_cached, fs, cfg, dataset.root)
        if e2e_gap > E2E_TOLERANCE:
            raise RuntimeError(
                f"internal: the end-to-end model differs from the evaluated model on cached features by {e2e_gap:.4f}"
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
                "backbone": {
                    "name": cfg.backbone.name,
                    "layer": cfg.backbone.layer,
                    "preprocessing": settings["preprocessing"],
                },
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

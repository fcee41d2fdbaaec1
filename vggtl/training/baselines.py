"""Baselines the report puts beside the transfer model, on the same split.

The linear probe: logistic regression on standardized global-average-pooled
cached features (what the head must beat to be worth its parameters).

The from-scratch baseline: the small CNN of the classic Keras tutorials,
``Conv(32) - MaxPool - Conv(32) - MaxPool - Dense(128) - Dropout - softmax``
on 64x64 images with on-the-fly augmentation (flip, rotation, zoom), trained
on exactly the split the transfer model used, so the report can put "from
scratch" beside "transfer" on the same test images. Enabled by
``baseline.scratch: true``; it decodes the images itself (small, cheap) and
never touches the feature store.
"""

from __future__ import annotations

import numpy as np

from vggtl import blas
from vggtl.backbones.build import predict_eagerly
from vggtl.data import SPLITS, DecodeSettings
from vggtl.features.store import FeatureStore
from vggtl.training import heads
from vggtl.training.fit import Schedule, fit_keras, pooled_features, seed_everything
from vggtl.training.heads import PROBE_MAX_ITER

def probe_model(seed: int):
    """The linear-probe baseline's model: standardization + logistic regression (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed))


def linear_probe(fs: FeatureStore, seed: int) -> dict:
    """Logistic regression on standardized global-average-pooled features; accuracy per split."""
    pooled = {}
    for split in SPLITS:
        rows = fs.split_rows(split)
        # Pooled batch by batch: the probe never needs all full feature maps in RAM.
        pooled[split] = (pooled_features(fs, rows, "avg"), fs.labels[rows])
    if len(pooled["train"][1]) > heads.PROBE_EXACT_MAX_ROWS:
        return _incremental_linear_probe(pooled, len(fs.class_names), seed)
    model = blas.fit(probe_model(seed), *pooled["train"])
    return {f"{split}_accuracy": round(float(model.score(*pooled[split])), 6) if len(pooled[split][1]) else None
            for split in SPLITS}


def _incremental_linear_probe(pooled: dict, n_classes: int, seed: int) -> dict:
    """:func:`linear_probe` on a large training split, by :func:`heads.incremental_probe`."""
    x_train, y_train = pooled["train"]
    stats = heads.probe_stats(x_train)
    kernel, bias = heads.fit_probe(x_train, y_train, stats, n_classes, seed)
    scores = {}
    for split in SPLITS:
        x, y = pooled[split]
        logits = (x - stats[0]) / np.sqrt(stats[1]) @ kernel + bias
        scores[f"{split}_accuracy"] = round(float(np.mean(logits.argmax(axis=1) == y)), 6) if len(y) else None
    return scores


def build_scratch_cnn(n_classes: int, image_size: int = 64, augment: bool = True):
    """The tutorial CNN; augmentation layers are active only while training.

    Args:
        n_classes: number of output classes.
        image_size: square input side (uint8 RGB input, rescaled inside).
        augment: add RandomFlip / RandomRotation / RandomZoom at the input.
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    if augment:
        x = layers.RandomFlip("horizontal")(x)
        x = layers.RandomRotation(0.05)(x)
        x = layers.RandomZoom(0.1)(x)
    for _ in range(2):
        x = layers.Conv2D(32, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def decode_rows(fs, rows, root, decode: DecodeSettings) -> np.ndarray:
    """The store's images, decoded with ``decode`` (extraction's settings, at the CNN's size)."""
    return np.stack([decode.decode(root / fs.paths[r]) for r in rows])


def train_scratch(cfg, fs, root) -> dict:
    """Fit the baseline on the store's train split; val/test accuracy on the same rows.

    Args:
        cfg: the run config (``baseline.*``, ``data.*``, ``train.*``).
        fs: the open FeatureStore (its index defines the split).
        root: dataset root the index paths are relative to.
    """
    import keras

    seed_everything(cfg.seed + 2)
    size, n_classes = cfg.baseline.image_size, len(fs.class_names)
    decode = cfg.spec.decode.at_size(size)
    split = {s: fs.split_rows(s) for s in SPLITS}
    x = {s: decode_rows(fs, rows, root, decode) for s, rows in split.items()}
    y = {s: fs.labels[rows] for s, rows in split.items()}
    model = build_scratch_cnn(n_classes, size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    # The same loop as both phases; min_delta 0, as Keras' EarlyStopping had
    # (the CNN has no L2 term, so its val_loss is the cross-entropy watched).
    schedule = Schedule(cfg.baseline.epochs, cfg.train.batch_size, cfg.baseline.patience, 0.0, cfg.train.class_weight, cfg.seed + 2)
    history = fit_keras(model, x["train"][None], y["train"], (x["val"], y["val"]), n_classes, schedule, "from-scratch CNN")
    accuracy = {s: round(float(np.mean(predict_eagerly(model, x[s]).argmax(1) == y[s])), 6) for s in ("val", "test")}
    return {
        "val_accuracy": accuracy["val"],
        "test_accuracy": accuracy["test"],
        "epochs_trained": len(history["loss"]),
        "image_size": size,
        "params": int(model.count_params()),
    }

"""Fitting on cached features: seeding, class weights, the view sampler, and the
two phases (phase 1: the head; phase 2: the top blocks + head on stored
boundary activations)."""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np

from vggtl import config, tfquiet
from vggtl.errors import TrainingError
from vggtl.features.store import FeatureStore
from vggtl.training import devices, heads
from vggtl.training.metrics import accuracy, cross_entropy

POOL_BATCH = 256  # maps read from the store at a time when pooling (~25 MB of 7x7x512 float32)


def load_split(fs: FeatureStore, split: str, layer: str | None = None):
    """(rows, clean float32 features of ``layer``, labels) of one split."""
    rows = fs.split_rows(split)
    return rows, fs.features(rows, layer), fs.labels[rows]


def training_bank(fs: FeatureStore, rows, layer: str | None, views: int) -> np.ndarray:
    """``(views + 1, N, ...)`` float16: the clean features of the training rows,
    then each stored augmented view (float16 halves the RAM of the bank)."""
    bank = [fs.features(rows, layer, dtype=np.float16)]
    bank += [fs.view_features(rows, view, layer, dtype=np.float16) for view in range(1, views + 1)]
    return np.stack(bank)


def pooled_features(fs: FeatureStore, rows, pooling: str, layer: str | None = None, view: int = 0) -> np.ndarray:
    """``(N, D)`` float32: ``head.pooling`` of the clean features (``view`` 0) or
    of augmented view ``view`` of ``rows``, read from the store POOL_BATCH maps
    at a time, so only the vectors (~50x smaller than 7x7 maps) stay in RAM."""
    rows = np.asarray(rows, dtype=np.int64)
    shape = fs.feature_shapes[layer or fs.layers[0]]
    chunks = [heads.pool_numpy(np.zeros((0, *shape), np.float32), pooling)]
    for start in range(0, len(rows), POOL_BATCH):
        chunk = rows[start : start + POOL_BATCH]
        maps = fs.features(chunk, layer) if view == 0 else fs.view_features(chunk, view, layer)
        chunks.append(heads.pool_numpy(maps, pooling).astype(np.float32, copy=False))
    return np.concatenate(chunks)


def pooled_bank(fs: FeatureStore, rows, pooling: str, views: int) -> np.ndarray:
    """``(views + 1, N, D)`` float32: :func:`pooled_features` of the clean
    features of the training ``rows``, then of each stored augmented view."""
    return np.stack([pooled_features(fs, rows, pooling, view=view) for view in range(views + 1)])


class StoreBank:
    """:func:`training_bank` left in the store: ``bank[versions, idx]`` reads
    those maps (version 0: clean, v: augmented view v) when a batch needs
    them, so phase 2 holds one batch of boundary activations, not all."""

    def __init__(self, fs: FeatureStore, rows, layer: str | None, views: int):
        self.fs, self.rows, self.layer = fs, np.asarray(rows, dtype=np.int64), layer
        self.shape = (views + 1, len(self.rows), *fs.feature_shapes[layer or fs.layers[0]])

    def __getitem__(self, key) -> np.ndarray:
        versions, idx = (np.asarray(k) for k in key)  # as the view sampler indexes: two arrays of equal length
        out = np.empty((len(idx), *self.shape[2:]), np.float16)
        for version in np.unique(versions):
            at = np.flatnonzero(versions == version)
            rows = self.rows[idx[at]]
            out[at] = (self.fs.features(rows, self.layer, np.float16) if version == 0
                       else self.fs.view_features(rows, int(version), self.layer, np.float16))
        return out


def store_batches(fs: FeatureStore, rows, layer: str | None, batch_size: int, labels=None, n_classes: int = 0):
    """A Keras PyDataset of the clean maps of ``rows``, in order, read a batch at
    a time, with their one-hot ``labels`` when given: what ``fit``'s validation
    and ``predict`` (which ignores the labels) take instead of arrays."""
    import keras

    rows = np.asarray(rows, dtype=np.int64)
    onehot = keras.utils.to_categorical(labels, n_classes) if labels is not None else None

    class StoreBatches(keras.utils.PyDataset):
        def __len__(self):
            return -(-len(rows) // batch_size)

        def __getitem__(self, i):
            part = slice(i * batch_size, (i + 1) * batch_size)
            x = fs.features(rows[part], layer)
            return (x,) if onehot is None else (x, onehot[part])

    return StoreBatches()


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
            self.sample_weight = np.array([weights[int(y)] for y in labels], dtype=np.float32) if weights else None
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


def fit_model(model, bank, y_train, val_data, n_classes, *, epochs, batch_size, patience, class_weight_mode, seed, bar=None) -> dict:
    """fit() on the training bank (clean + views) with early stopping on val_loss;
    returns the history as plain lists. ``bar``: a :func:`progress_bar` to advance per epoch."""
    import keras

    callbacks = [_BarCallback(bar)] if bar is not None else []
    if patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True))
    weights = class_weights(y_train, n_classes, class_weight_mode)
    x_val, y_val = val_data
    # In RAM, or a labelled store_batches read batch by batch.
    validation = (x_val, keras.utils.to_categorical(y_val, n_classes)) if isinstance(x_val, np.ndarray) else x_val
    if bank.shape[0] == 1 and isinstance(bank, np.ndarray):  # in RAM, no views: plain arrays, Keras shuffles
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
    """Phase 1 on feature maps in RAM: :func:`fit_head_on_pooled` after pooling
    ``bank`` (``(versions, N, ...)`` maps, clean first) and ``x_val``."""
    pooled = np.stack([heads.pool_numpy(version.astype(np.float32), cfg.head.pooling) for version in bank])
    return fit_head_on_pooled(cfg, pooled, bank.shape[2:], y_train, heads.pool_numpy(x_val, cfg.head.pooling), y_val, n_classes)


def fit_head_on_pooled(cfg: config.Config, pooled, feature_shape, y_train, pooled_val, y_val, n_classes: int):
    """Phase 1: train the head on cached features (clean + views); best weights restored.

    Takes the maps already pooled (``head.pooling``; :func:`pooled_bank`
    reads them from the store in batches): the head's layers after its
    pooling are trained on the vectors by :func:`fit_vectors`, one compiled
    call per epoch, so a few hundred epochs take seconds.

    Args:
        pooled: ``(versions, N, D)`` pooled training vectors, clean first.
        feature_shape: shape of one cached map (the head's input).
        pooled_val: ``(M, D)`` pooled validation vectors.

    Returns:
        ``(head, history)``: the head on feature maps (what the artifact
        uses) and the per-epoch curves (see :func:`fit_vectors`).
    """
    seed_everything(cfg.seed)  # first: also imports TensorFlow quietly
    started = time.perf_counter()
    stats = heads.pooled_stats(pooled[0])
    head = heads.build_head(tuple(feature_shape), n_classes, cfg.head, stats=stats if cfg.head.standardize else None)
    history = fit_vectors(heads.vector_model(head), pooled, y_train, pooled_val, y_val, n_classes, cfg.train, cfg.seed)
    if cfg.head.probe:
        # Measured on clipart8 over 10 split seeds (README): the average is
        # steadier than either alone and never 2 points below the probe.
        probe_stats = heads.probe_stats(pooled[0])
        probe = heads.fit_probe(pooled[0], y_train, probe_stats, n_classes, cfg.seed)
        head = heads.with_probe(head, cfg.head.pooling, probe_stats, probe)
    history["seconds"] = round(time.perf_counter() - started, 2)
    return head, history


def fit_vectors(model, bank, y_train, x_val, y_val, n_classes: int, train, seed: int) -> dict:
    """Train ``model`` on pooled vectors with early stopping on the validation
    cross-entropy; the best epoch's weights are restored.

    Args:
        model: a Keras model on vectors (:func:`vggtl.training.heads.vector_model`).
        bank: ``(versions, N, D)`` float32 training vectors, clean first, then
            each augmented view; every epoch draws one version per image.
        y_train, x_val, y_val: labels and validation vectors.
        n_classes: number of classes.
        train: the ``train`` config section (optimizer, learning rate,
            batch size, epochs, patience, min_delta, class weights, smoothing).
        seed: seeds the per-epoch order and draw.

    Returns:
        Per-epoch lists ``loss`` (training objective, L2 included),
        ``accuracy``, ``val_cross_entropy`` (what stopping watches),
        ``val_loss`` (with the L2 terms, as Keras reports it),
        ``val_accuracy``; and ``best_epoch``, ``stopped_early``.
    """
    import keras

    tf = tfquiet.load()
    epoch_step = _compiled_epoch(model, heads.make_optimizer(train.optimizer, train.learning_rate),
                                 keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing), train.batch_size)
    predict = tf.function(lambda x: model(x, training=False))
    onehot = keras.utils.to_categorical(y_train, n_classes).astype(np.float32)
    weights = class_weights(y_train, n_classes, train.class_weight)
    sample_weight = np.array([weights[int(y)] for y in y_train], np.float32) if weights else np.ones(len(y_train), np.float32)
    stopper = _EarlyStopping(train.early_stopping_patience, train.min_delta)
    history = {key: [] for key in ("loss", "accuracy", "val_cross_entropy", "val_loss", "val_accuracy")}
    with progress_bar(train.epochs, "phase 1 (head)") as bar:
        _epochs(model, epoch_step, predict, bank, onehot, sample_weight, x_val, y_val, train, seed, stopper, history, bar)
    stopper.restore(model)
    history["best_epoch"] = stopper.best_epoch + 1
    history["stopped_early"] = stopper.stopped
    return history


def _epochs(model, epoch_step, predict, bank, onehot, sample_weight, x_val, y_val, train, seed, stopper, history, bar):
    """The epoch loop of :func:`fit_vectors` (fills ``history``, ``stopper`` decides)."""
    for epoch in range(train.epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(bank.shape[1]).astype(np.int32)
        x = bank[rng.integers(0, bank.shape[0], size=bank.shape[1]), np.arange(bank.shape[1])] if bank.shape[0] > 1 else bank[0]
        loss, acc = epoch_step(x, onehot, sample_weight, order)
        if not np.isfinite(float(loss)):
            raise TrainingError(
                f"phase 1 diverged: the training loss is {float(loss)} at epoch {epoch + 1}; "
                f"lower train.learning_rate (now {train.learning_rate:g}) or use train.optimizer: adam"
            )
        probs = predict(x_val).numpy()
        penalty = float(sum(float(l) for l in model.losses))
        ce = cross_entropy(y_val, probs)
        for key, value in zip(history, (float(loss), float(acc), ce, ce + penalty, accuracy(y_val, probs))):
            history[key].append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.3f}", val_acc=f"{history['val_accuracy'][-1]:.3f}", refresh=False)
        if stopper.update(ce, epoch, model):
            break


@contextlib.contextmanager
def progress_bar(total: int, title: str, unit: str = "epoch"):
    """A tqdm bar of ``unit``s on the user's terminal (none when stderr is not a TTY)."""
    from tqdm import tqdm

    stream = tfquiet.terminal()
    try:
        with tqdm(total=total, desc=title, unit=unit, file=stream, disable=None, leave=False) as bar:
            yield bar
    finally:
        if stream is not sys.stderr:
            stream.close()


def _BarCallback(bar):
    """A Keras callback advancing ``bar`` by one epoch (loss and val accuracy shown)."""
    import keras

    class BarCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            bar.update(1)
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}", val_acc=f"{logs.get('val_accuracy', float('nan')):.3f}", refresh=False)

    return BarCallback()


def _compiled_epoch(model, optimizer, loss_fn, batch_size: int):
    """One tf.function running a whole epoch of minibatch steps (no Python per step)."""
    tf = tfquiet.load()
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def epoch(x, y, w, order):
        n = tf.shape(order)[0]
        steps = (n + batch_size - 1) // batch_size
        total, correct = tf.constant(0.0), tf.constant(0.0)
        for step in tf.range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            xb, yb, wb = tf.gather(x, idx), tf.gather(y, idx), tf.gather(w, idx)
            with tf.GradientTape() as tape:
                probs = model(xb, training=True)
                loss = loss_fn(yb, probs, sample_weight=wb)
                if model.losses:
                    loss += tf.add_n(model.losses)
            optimizer.apply(tape.gradient(loss, variables), variables)
            size = tf.cast(tf.shape(idx)[0], tf.float32)
            total += loss * size
            correct += tf.reduce_sum(tf.cast(tf.argmax(probs, 1) == tf.argmax(yb, 1), tf.float32))
        return total / tf.cast(n, tf.float32), correct / tf.cast(n, tf.float32)

    return epoch


class _EarlyStopping:
    """Stop when the validation cross-entropy has not fallen by ``min_delta`` for
    ``patience`` epochs (0: never stop early); remember the best weights."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.weights, self.stopped = np.inf, -1, None, False

    def update(self, value: float, epoch: int, model) -> bool:
        """Record ``value`` for ``epoch``; True when training should stop."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch = value, epoch
            if self.patience:  # with stopping off the last epoch's weights are kept
                self.weights = model.get_weights()
            return False
        self.stopped = bool(self.patience) and epoch - self.best_epoch >= self.patience
        return self.stopped

    def restore(self, model) -> None:
        if self.weights is not None:
            model.set_weights(self.weights)


def trainable_top(base, spec):
    """The blocks of ``base`` between the fine-tuning boundary and the head's
    layer, trainable except BatchNormalization.

    BatchNormalization (ResNet, Inception, MobileNet) stays frozen: in Keras 3
    a frozen BN layer runs in inference mode with its ImageNet statistics,
    which a few small batches would otherwise overwrite (calling the block
    with training=False does not hold inside fit).
    """
    import keras

    from vggtl.backbones import build

    top = build.top_model(base, spec.boundary_layer, spec.head_layer)
    for layer in top.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return top


def finetune(cfg: config.Config, base, head, bank, y_train, x_val, y_val, n_classes: int):
    """Phase 2: train the unfrozen top blocks + head on stored boundary activations.

    ``base`` is the backbone whose top blocks are trained in place (the
    layers are shared with the returned model), so the end-to-end model built
    from ``base`` afterwards carries the fine-tuned weights. With several
    devices (``finetune.devices``), replicas of ``base`` and ``head`` are
    trained under ``tf.distribute.MirroredStrategy`` and their weights copied
    back.

    Returns:
        ``(model, history, kept)``; ``kept`` is False when phase 2 did not
        help and the phase-1 weights were restored.
    """
    seed_everything(cfg.seed + 1)
    strategy, where = devices.strategy(cfg.finetune.devices)
    trained_base, trained_head = (base, head) if strategy is None else _replicas(strategy, base, head)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = _finetune_model(cfg, trained_base, trained_head, bank.shape[2:], compiled=True)
    start, start_weights = val_scores(model, x_val, y_val), model.get_weights()
    with progress_bar(cfg.finetune.epochs, "phase 2 (fine-tune)") as bar:
        history = fit_model(
            model, bank, y_train, (x_val, y_val), n_classes,
            epochs=cfg.finetune.epochs, batch_size=cfg.finetune.batch_size,
            patience=cfg.finetune.early_stopping_patience, class_weight_mode=cfg.train.class_weight, seed=cfg.seed + 1,
            bar=bar,
        )
    # Early stopping restores the best phase-2 epoch, which can still be worse
    # than where phase 2 started: then fine-tuning did not help; keep phase 1.
    # Kept only if the validation cross-entropy falls AND the validation
    # accuracy does not: Keras' val_loss includes the L2 penalties, and a
    # network collapsing towards uniform predictions can lower both it and
    # the cross-entropy of an overconfident phase-1 head while its accuracy
    # drops (seen with a random-weight ResNet50 on clipart8: 0.46 -> 0.16).
    end = val_scores(model, x_val, y_val)
    kept = end[0] < start[0] and end[1] >= start[1]
    if not kept:
        model.set_weights(start_weights)
    history["val_cross_entropy_before_after"] = [start[0], end[0]]
    history["val_accuracy_before_after"] = [start[1], end[1]]
    history["devices"] = where
    if strategy is not None:  # the replicas' weights into the base and head the artifact is built from
        base.set_weights(trained_base.get_weights())
        head.set_weights(trained_head.get_weights())
        model = _finetune_model(cfg, base, head, bank.shape[2:], compiled=False)
    return model, history, kept


def _replicas(strategy, base, head):
    """Copies of ``base`` and ``head`` (same weights) whose variables the strategy mirrors."""
    import keras

    with strategy.scope():
        copies = []
        for model in (base, head):
            copy = keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
            copies.append(copy)
    return tuple(copies)


def _finetune_model(cfg: config.Config, base, head, input_shape, compiled: bool):
    """The trainable top blocks of ``base`` + ``head``, on stored boundary activations."""
    import keras

    inputs = keras.Input(input_shape, name=cfg.spec.boundary_layer)
    model = keras.Model(inputs, head(trainable_top(base, cfg.spec)(inputs)), name="finetune")
    if compiled:
        model.compile(
            optimizer=heads.make_optimizer(cfg.finetune.optimizer, cfg.finetune.learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
            metrics=["accuracy"],
        )
    return model


def val_scores(model, x_val, y_val) -> tuple[float, float]:
    """(cross-entropy, accuracy) of ``model`` on the validation split."""
    probs = model.predict(x_val, verbose=0)
    return cross_entropy(y_val, probs), accuracy(y_val, probs)

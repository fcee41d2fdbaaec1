"""Fitting on cached features: seeding, class weights, the view sampler, and the
two phases (phase 1: the head; phase 2: the top blocks + head on stored
boundary activations)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

import numpy as np

from vggtl import config, tfquiet
from vggtl.backbones import build
from vggtl.errors import TrainingError
from vggtl.features.store import FeatureStore
from vggtl.training import devices, heads
from vggtl.training.metrics import accuracy, cross_entropy

# Maps read from the store at a time when pooling, and per prediction batch:
# 64 VGG16 maps are 6.4 MB in float32. Measured in train on clipart8 (2-core
# VM): 256 at a time took 0.33-0.37 s to pool the training split and
# 0.54-0.64 s to predict every split, 64 at a time 0.05-0.10 s and 0.33-0.47 s,
# the same numbers to the bit: each batch's arrays and the head's
# intermediates (256 x 1024 x 35 floats in a square-root pooling) are fresh
# memory the kernel must hand over page by page; smaller ones are reused.
POOL_BATCH = 64
PREDICT_BATCH = 64


@dataclass
class Split:
    """One split's rows (into the store's index) and labels, and where its
    features come from: ``x`` when held in RAM (phase 2's boundary maps),
    else read from ``fs`` in batches whenever a model predicts the split."""

    rows: np.ndarray
    y: np.ndarray
    fs: FeatureStore | None = None
    layer: str | None = None
    x: np.ndarray | None = None

    def predict(self, model) -> np.ndarray:
        """``model``'s probabilities for every row, in order."""
        # Called eagerly: a few batches cost less than tracing the function
        # Keras' predict builds for every model (seconds per model under a
        # distribution strategy).
        if self.x is not None:
            return build.predict_eagerly(model, self.x, PREDICT_BATCH)
        return build.predict_eagerly(model, (maps for _, maps in self.fs.iter_batches(self.rows, PREDICT_BATCH, self.layer)))


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
    if pooling == "avg" and view == 0:  # kept by the store: the probe, the leakage audit and the unknown detector read them too
        return fs.averaged(rows, layer, POOL_BATCH)
    shape = fs.feature_shapes[layer or fs.layers[0]]
    chunks = [heads.pool_numpy(np.zeros((0, *shape), np.float32), pooling)]
    for start in range(0, len(rows), POOL_BATCH):
        chunk = rows[start : start + POOL_BATCH]
        maps = fs.features(chunk, layer) if view == 0 else fs.view_features(chunk, view, layer)
        chunks.append(heads.pool_numpy(maps, pooling).astype(np.float32, copy=False))
    return np.concatenate(chunks)


def pooled_bank(fs: FeatureStore, rows, pooling: str, views: int, clean_if_missing: bool = False) -> np.ndarray:
    """``(views + 1, N, D)`` float32: :func:`pooled_features` of the clean
    features of ``rows``, then of each stored augmented view.

    Args:
        clean_if_missing: a row without stored views repeats its clean vector
            in every view (cross-validation: val-split rows have none); False
            refuses such a row (StoreError), as training must.
    """
    rows = np.asarray(rows, dtype=np.int64)
    clean = pooled_features(fs, rows, pooling)
    with_views = fs.rows_with_views(rows, views) if clean_if_missing else np.ones(len(rows), dtype=bool)
    bank = [clean]
    for view in range(1, views + 1):
        pooled = clean.copy()
        pooled[with_views] = pooled_features(fs, rows[with_views], pooling, view=view)
        bank.append(pooled)
    return np.stack(bank)


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


def sample_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """:func:`class_weights` expanded to one float32 weight per example (None: unweighted)."""
    weights = class_weights(labels, n_classes, mode)
    return np.array([weights[int(y)] for y in labels], dtype=np.float32) if weights else None


def draw_versions(seed: int, epoch: int, n_images: int, n_versions: int) -> tuple[np.ndarray, np.ndarray]:
    """The one view draw of every training loop: ``(order, version)`` -- the
    images shuffled, and for each one version (0: clean, v: stored view v)
    drawn uniformly -- reproducibly from ``(seed, epoch)``."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n_images)
    return order, rng.integers(0, n_versions, size=n_images)


def view_sampler(bank, labels: np.ndarray, n_classes: int, batch_size: int, seed: int, class_weight: str = "none"):
    """A Keras PyDataset over ``bank`` (``(versions, N, ...)``, clean first)
    that, each epoch, yields the images in :func:`draw_versions` order, each
    as its drawn version, with one-hot labels (and class weights)."""
    import keras

    onehot = keras.utils.to_categorical(labels, n_classes)
    weight = sample_weights(labels, n_classes, class_weight)

    class ViewSampler(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order, self.version = draw_versions(seed, self.epoch, bank.shape[1], bank.shape[0])

        def __len__(self):
            return -(-bank.shape[1] // batch_size)

        def __getitem__(self, i):
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            x = bank[self.version[idx], idx].astype(np.float32)
            return (x, onehot[idx]) if weight is None else (x, onehot[idx], weight[idx])

        def on_epoch_end(self):
            self.epoch += 1
            self.order, self.version = draw_versions(seed, self.epoch, bank.shape[1], bank.shape[0])

    return ViewSampler()


# --------------------------------------------------------------------------- the training loop


@dataclass(frozen=True)
class Schedule:
    """How long and on what a training loop runs.

    Attributes:
        epochs: the cap.
        batch_size: examples per step.
        patience: epochs without improvement before stopping; 0 = never early.
        min_delta: smallest fall of the validation cross-entropy that counts.
        class_weight: ``'balanced'`` or ``'none'`` (``train.class_weight``).
        seed: seeds the per-epoch order and view draw.
    """

    epochs: int
    batch_size: int
    patience: int
    min_delta: float
    class_weight: str
    seed: int


class StoppingPolicy:
    """Early stopping on the validation cross-entropy *without* the L2 terms
    (what the model is judged by, not what it is optimised with): stop when it
    has not fallen by ``min_delta`` for ``patience`` epochs (0: never stop
    early), and restore the best epoch's weights."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.weights, self.stopped = np.inf, -1, None, False

    def update(self, value: float, epoch: int, model) -> bool:
        """Record ``value`` for ``epoch``; True when training should stop. NaN
        means no validation split: every epoch runs and the last one is kept."""
        if np.isnan(value):
            self.best_epoch = epoch
            return False
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


HISTORY_KEYS = ("loss", "accuracy", "val_cross_entropy", "val_loss", "val_accuracy", "val_accuracy_final")


def run_epochs(model, step, validate, schedule: Schedule, title: str, diverged_hint: str) -> dict:
    """The one epoch loop of phase 1, phase 2 and the from-scratch baseline.

    Args:
        model: the Keras model being trained (its weights are restored to the best epoch).
        step: ``epoch -> (loss, accuracy)``: one epoch of training.
        validate: ``() -> (cross-entropy, accuracy[, final model's accuracy])``
            on the validation split; the third when the phase's final model is
            not the model trained (phase 1: the head averaged with the probe).
        schedule: the epoch cap and the :class:`StoppingPolicy` settings.
        title: the progress bar's and the errors' name of the loop.
        diverged_hint: what to change when the loss stops being finite.

    Returns:
        Per-epoch lists (:data:`HISTORY_KEYS`: ``val_loss`` adds the model's
        L2 terms, as Keras reports it; ``val_cross_entropy`` is what stopping
        watches; ``val_accuracy_final`` is the accuracy of the model the
        results table reports, restored at ``best_epoch``), ``best_epoch``
        (1-based) and ``stopped_early``.

    Raises:
        TrainingError: the training loss became NaN or infinite.
    """
    policy = StoppingPolicy(schedule.patience, schedule.min_delta)
    history = {key: [] for key in HISTORY_KEYS}
    with progress_bar(schedule.epochs, title) as bar:
        for epoch in range(schedule.epochs):
            loss, acc = (float(v) for v in step(epoch))
            if not np.isfinite(loss):
                raise TrainingError(f"{title} diverged: the training loss is {loss} at epoch {epoch + 1}; {diverged_hint}")
            ce, val_acc, *final = validate()
            penalty = float(sum(float(term) for term in model.losses))
            for key, value in zip(HISTORY_KEYS, (loss, acc, ce, ce + penalty, val_acc, *(final or [val_acc]))):
                history[key].append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{val_acc:.3f}", refresh=False)
            if policy.update(ce, epoch, model):
                break
    policy.restore(model)
    return {**history, "best_epoch": policy.best_epoch + 1, "stopped_early": policy.stopped}


def fit_keras(model, bank, y_train, validation, n_classes: int, schedule: Schedule, title: str) -> dict:
    """Train a compiled Keras model on ``bank`` (``(versions, N, ...)``, clean
    first; in RAM or a :class:`StoreBank`) with :func:`run_epochs`: phase 2 and
    the from-scratch baseline.

    Args:
        validation: ``(x_val, y_val)``; ``x_val`` an array or a
            :func:`store_batches` dataset read batch by batch.
    """
    sampler = view_sampler(bank, y_train, n_classes, schedule.batch_size, schedule.seed, schedule.class_weight)
    x_val, y_val = validation

    def step(epoch):
        logs = model.fit(sampler, epochs=epoch + 1, initial_epoch=epoch, verbose=0).history
        return logs["loss"][-1], logs["accuracy"][-1]

    def validate():
        return val_scores(model, x_val, y_val)

    return run_epochs(model, step, validate, schedule, title, "lower its learning rate")


def train_head(cfg: config.Config, fs: FeatureStore, train: Split, val: Split):
    """Phase 1 from the store: the training rows' maps (clean + ``augment.views``
    views) and the validation maps pooled in batches, then
    :func:`fit_head_on_pooled`. What ``vggtl train`` and ``vggtl tune``'s test
    scores run; cross-validation calls :func:`fit_head_on_pooled` on its folds.

    Returns:
        ``(head, history)``, see :func:`fit_head_on_pooled`.
    """
    pooled = pooled_bank(fs, train.rows, cfg.head.pooling, cfg.augment.views)
    pooled_val = pooled_features(fs, val.rows, cfg.head.pooling)
    return fit_head_on_pooled(cfg, pooled, fs.feature_shape, train.y, pooled_val, val.y, len(fs.class_names))


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
    validation = (pooled_val, y_val)
    if cfg.head.probe:
        # Measured on clipart8 over 10 split seeds (README): the average is
        # steadier than either alone and never 2 points below the probe.
        probe_stats = heads.probe_stats(pooled[0])
        probe = heads.fit_probe(pooled[0], y_train, probe_stats, n_classes, cfg.seed)
        # Each epoch also scores the average (the model the results table
        # reports), so the learning curves and the table give the same number.
        validation += (heads.probe_probabilities(pooled_val, probe_stats, probe),)
    history = fit_vectors(heads.vector_model(head), pooled, y_train, validation, n_classes, cfg.train, cfg.seed)
    if cfg.head.probe:
        head = heads.with_probe(head, cfg.head.pooling, probe_stats, probe)
    history["seconds"] = round(time.perf_counter() - started, 2)
    return head, history


def fit_vectors(model, bank, y_train, validation, n_classes: int, train, seed: int) -> dict:
    """Train ``model`` on pooled vectors with :func:`run_epochs` (early stopping
    on the validation cross-entropy, best epoch's weights restored); each epoch
    is one compiled call.

    Args:
        model: a Keras model on vectors (:func:`vggtl.training.heads.vector_model`).
        bank: ``(versions, N, D)`` float32 training vectors, clean first, then
            each augmented view; every epoch draws one version per image.
        y_train: training labels.
        validation: ``(x_val, y_val)``, validation vectors and labels, and
            optionally the probabilities ``model``'s are averaged with in the
            final model (the probe's), scored as ``val_accuracy_final``.
        n_classes: number of classes.
        train: the ``train`` config section (optimizer, learning rate,
            batch size, epochs, patience, min_delta, class weights, smoothing).
        seed: seeds the per-epoch order and draw.

    Returns:
        See :func:`run_epochs`.
    """
    import keras

    tf = tfquiet.load()
    epoch_step = _compiled_epoch(model, heads.make_optimizer(train.optimizer, train.learning_rate),
                                 keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing), train.batch_size)
    predict = tf.function(lambda x: model(x, training=False))
    onehot = keras.utils.to_categorical(y_train, n_classes).astype(np.float32)
    weight = sample_weights(y_train, n_classes, train.class_weight)
    weight = np.ones(len(y_train), np.float32) if weight is None else weight

    def step(epoch):
        order, version = draw_versions(seed, epoch, bank.shape[1], bank.shape[0])
        x = bank[version, np.arange(bank.shape[1])] if bank.shape[0] > 1 else bank[0]
        return epoch_step(x, onehot, weight, order.astype(np.int32))

    def validate():
        x_val, y_val, *companion = validation
        probs = predict(x_val).numpy()
        final = [accuracy(y_val, (probs + companion[0]) / 2)] if companion else []
        return cross_entropy(y_val, probs), accuracy(y_val, probs), *final

    schedule = Schedule(train.epochs, train.batch_size, train.early_stopping_patience, train.min_delta, train.class_weight, seed)
    hint = f"lower train.learning_rate (now {train.learning_rate:g}) or use train.optimizer: adam"
    return run_epochs(model, step, validate, schedule, "phase 1", hint)


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


def _compiled_epoch(model, optimizer, loss_fn, batch_size: int):
    """One tf.function running a whole epoch of minibatch steps (no Python per step).

    Traced once per model: the optimizer's variables are made before the first
    call (made inside it, TensorFlow traces the function twice), and the loop
    is a ``tf.while_loop`` written out (no AutoGraph conversion). Measured on a
    tiny head: the first epoch 2.7 s -> 1.3 s, the same losses to the bit.
    """
    tf = tfquiet.load()
    variables = model.trainable_variables
    optimizer.build(variables)

    def epoch(x, y, w, order):
        n = tf.shape(order)[0]
        steps = (n + batch_size - 1) // batch_size

        def minibatch(step, total, correct):
            idx = order[step * batch_size : (step + 1) * batch_size]
            xb, yb, wb = tf.gather(x, idx), tf.gather(y, idx), tf.gather(w, idx)
            with tf.GradientTape() as tape:
                probs = model(xb, training=True)
                loss = loss_fn(yb, probs, sample_weight=wb)
                if model.losses:
                    loss += tf.add_n(model.losses)
            optimizer.apply(tape.gradient(loss, variables), variables)
            size = tf.cast(tf.shape(idx)[0], tf.float32)
            hits = tf.reduce_sum(tf.cast(tf.argmax(probs, 1) == tf.argmax(yb, 1), tf.float32))
            return step + 1, total + loss * size, correct + hits

        start = (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        _, total, correct = tf.while_loop(lambda step, *_: step < steps, minibatch, start)
        return total / tf.cast(n, tf.float32), correct / tf.cast(n, tf.float32)

    return tf.function(epoch, reduce_retracing=True, autograph=False)


def trainable_top(base, spec):
    """The blocks of ``base`` between the fine-tuning boundary and the head's
    layer, trainable except BatchNormalization.

    BatchNormalization (ResNet, Inception, MobileNet) stays frozen: in Keras 3
    a frozen BN layer runs in inference mode with its ImageNet statistics,
    which a few small batches would otherwise overwrite (calling the block
    with training=False does not hold inside fit).
    """
    import keras

    top = build.top_model(base, spec.boundary_layer, spec.head_layer)
    for layer in top.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return top


def finetune(cfg: config.Config, base, head, bank, y_train, validation, n_classes: int):
    """Phase 2: train the unfrozen top blocks + head on stored boundary activations.

    ``base`` is the backbone whose top blocks are trained in place (the
    layers are shared with the returned model), so the end-to-end model built
    from ``base`` afterwards carries the fine-tuned weights. With several
    devices (``finetune.devices``), replicas of ``base`` and ``head`` are
    trained under ``tf.distribute.MirroredStrategy`` and their weights copied
    back.

    Phase 2 runs the same loop as phase 1 (:func:`run_epochs`): it stops on
    the validation cross-entropy without the L2 terms (``min_delta`` 0, as
    Keras' EarlyStopping had), patience ``finetune.early_stopping_patience``.

    Args:
        validation: ``(x_val, y_val)`` boundary maps (or store batches) and labels.

    Returns:
        ``(model, history, kept)``; ``kept`` is False when phase 2 did not
        help and the phase-1 weights were restored.
    """
    x_val, y_val = validation
    seed_everything(cfg.seed + 1)
    strategy, where = devices.strategy(cfg.finetune.devices)
    trained_base, trained_head = (base, head) if strategy is None else _replicas(strategy, base, head)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = _finetune_model(cfg, trained_base, trained_head, bank.shape[2:], compiled=True)
    start, start_weights = val_scores(model, x_val, y_val), model.get_weights()
    ft = cfg.finetune
    schedule = Schedule(ft.epochs, ft.batch_size, ft.early_stopping_patience, 0.0, cfg.train.class_weight, cfg.seed + 1)
    history = fit_keras(model, bank, y_train, validation, n_classes, schedule, "phase 2 (fine-tune)")
    # Early stopping restores the best phase-2 epoch, which can still be worse
    # than where phase 2 started: then fine-tuning did not help; keep phase 1.
    # Kept only if the validation cross-entropy falls AND the validation
    # accuracy does not: a network collapsing towards uniform predictions can
    # lower the cross-entropy of an overconfident phase-1 head while its
    # accuracy drops (seen with a random-weight ResNet50 on clipart8: 0.46 -> 0.16).
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
    """(cross-entropy, accuracy) of ``model`` on the validation split (``x_val``
    in RAM, or a :func:`store_batches` dataset)."""
    batches = x_val if isinstance(x_val, np.ndarray) else (x_val[i][0] for i in range(len(x_val)))
    probs = build.predict_eagerly(model, batches, PREDICT_BATCH)  # maps in RAM: as many a call as from the store
    return cross_entropy(y_val, probs), accuracy(y_val, probs)

"""Keras models of a backbone, built in one place: the base, the feature model
extraction runs, the block above the fine-tuning boundary, and the end-to-end
model an artifact ships. TensorFlow is imported by the functions, not here.
"""

from __future__ import annotations

import numpy as np

from vggtl.backbones import registry
from vggtl.backbones.resolve import ResolvedWeights, load_weights
from vggtl.backbones.spec import Spec


# Name of the layers flipping the image in a mirror-averaged feature model
# (see :func:`mirror`): Grad-CAM finds the mirror branch by its output layer.
MIRROR_IMAGE = "mirror_image"


def mirror_output_name(name: str) -> str:
    """Name of the last layer of :func:`mirror` ``(x, name)``: its output is the flipped ``x``."""
    return f"{name}_back"


def build_base(spec: Spec, weights: ResolvedWeights, seed: int):
    """The convolutional base of ``spec`` (``include_top=False``) with ``weights`` loaded.

    Args:
        spec: the resolved backbone (``cfg.spec``).
        weights: from :func:`vggtl.backbones.resolve.resolve_weights`.
        seed: seeds random initialisation when ``weights`` are random.

    Raises:
        WeightsError: the weights file does not fit this backbone.
    """
    import keras

    size = spec.image_size
    keras.utils.set_random_seed(seed)
    if spec.arch.width != 1.0:
        return narrow_vgg(spec.arch, size)  # random weights only (config checked)
    application = getattr(keras.applications, spec.arch.application)
    base = application(include_top=False, weights=None, input_shape=(size, size, 3))
    load_weights(base, spec.arch, weights)
    return base


def narrow_vgg(arch, size: int):
    """``keras.applications``' VGG stack of ``arch.block_convs`` (same layer
    names, kernels, padding and pooling) with ``arch``'s narrowed channel
    counts (:meth:`~vggtl.backbones.registry.Architecture.narrowed`)."""
    import keras

    x = inputs = keras.Input((size, size, 3))
    for block, convs in enumerate(arch.block_convs, 1):
        channels = arch.layers[f"block{block}_pool"].channels
        for conv in range(1, convs + 1):
            x = keras.layers.Conv2D(channels, 3, activation="relu", padding="same", name=f"block{block}_conv{conv}")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=arch.name)


def feature_model(spec: Spec, weights: ResolvedWeights, layers, seed: int, base=None):
    """uint8 RGB images -> activations of ``layers`` (preprocessing included).

    Args:
        spec, weights, seed: as for :func:`build_base`.
        layers: one layer name (one output) or a sequence of names (a list
            of outputs, all from the same single pass).
        base: an existing base to share layers with (fine-tuned blocks
            trained through :func:`top_model` then show up here); by default
            a new one is built.
    """
    import keras

    from vggtl.backbones import preprocess

    names = [layers] if isinstance(layers, str) else list(layers)
    tags = [registry.keras_name(layer) for layer in names]
    base = base if base is not None else build_base(spec, weights, seed)
    size = spec.image_size
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess.apply(spec.preprocessing, inputs)
    outputs = [tap(base, layer) for layer in names]
    truncated = keras.Model(base.input, outputs, name=spec.name)
    # Frozen: also keeps BatchNormalization layers (ResNet, Inception,
    # MobileNet) in inference mode, with their ImageNet statistics.
    truncated.trainable = False
    maps = truncated(x)
    if spec.mirror_average:
        # Preprocessing is per pixel, so mirroring after it equals mirroring the image.
        mirrored = truncated(mirror(x, MIRROR_IMAGE))
        maps = [
            keras.layers.Average(name=f"mirror_average_{tag}")([m, mirror(n, f"mirror_{tag}")])
            for tag, m, n in zip(tags, maps, mirrored)
        ]
    return keras.Model(inputs, maps if len(maps) > 1 else maps[0], name=f"{spec.name}_{tags[0]}")


def tap(base, layer: str):
    """The output tensor of ``layer`` in ``base``; for a joined layer
    (``'block4_pool+block5_pool'``, see :func:`vggtl.backbones.registry.layer_parts`)
    the channel concatenation of its parts, each lower part max-pooled onto
    the last part's grid (as VGG's own pooling layers downsample; max pooling
    also keeps a part's global maximum exactly, and ignores 'same' padding).
    Built-in layers, so ``model.keras`` and every export carry it."""
    import keras

    if layer == registry.STATS_LAYER:
        return channel_stats(base)
    parts = registry.layer_parts(layer)
    if len(parts) == 1:
        return base.get_layer(layer).output
    maps = [base.get_layer(part).output for part in parts]
    target = maps[-1].shape[1]
    pooled = []
    for part, x in zip(parts[:-1], maps[:-1]):
        window, padding = registry.pool_onto(x.shape[1], target)  # config checked that it fits
        name = f"{part}_onto_{parts[-1]}"
        pooled.append(x if window == 1 else keras.layers.MaxPooling2D(window, padding=padding, name=name)(x))
    return keras.layers.Concatenate(name=registry.keras_name(layer))(pooled + maps[-1:])


def channel_stats(base):
    """``log1p`` of the mean and standard deviation over positions of every
    channel of ``base``'s style layers, as a ``(1, 1, C)`` map
    (:data:`~vggtl.backbones.registry.STATS_LAYER`). Keras ops, which
    ``model.keras`` records by name: it loads without vggtl, and every export
    carries them. log1p: ReLU statistics are heavy-tailed; the unknown
    detector's Mahalanobis distance wants them closer to Gaussian."""
    import keras
    from keras import ops

    stats = []
    for name in registry.style_layers_of({layer.name for layer in base.layers}):
        x = base.get_layer(name).output
        mean = ops.mean(x, axis=(1, 2))
        var = ops.maximum(ops.mean(ops.square(x), axis=(1, 2)) - ops.square(mean), 0.0)
        stats += [mean, ops.sqrt(var)]
    # log(1 + x), not log1p: tf2onnx writes an ONNX Log1p no runtime implements.
    return keras.layers.Reshape((1, 1, -1), name=registry.STATS_LAYER)(ops.log(ops.concatenate(stats, axis=-1) + 1.0))


def mirror(x, name: str):
    """``x`` (batch, height, width, channels) flipped left-right, from built-in
    layers (so ``model.keras`` needs no custom code): the width axis moved last,
    a frozen Dense whose kernel is the reversed identity (products with 1 and
    0: exact), moved back."""
    import keras
    import numpy as np

    width = x.shape[2]
    if width == 1:  # nothing to flip (and tf2onnx mishandles a Dense of width 1 on this axis)
        return x
    x = keras.layers.Permute((1, 3, 2), name=f"{name}_to_last")(x)
    flip = keras.layers.Dense(width, use_bias=False, trainable=False, name=name)
    x = flip(x)
    flip.set_weights([np.eye(width, dtype="float32")[::-1]])
    return keras.layers.Permute((1, 3, 2), name=mirror_output_name(name))(x)


def top_model(base, boundary: str, top: str):
    """The layers of ``base`` from above ``boundary`` up to ``top``, as a model on
    stored ``boundary`` activations (``top`` may be a joined layer whose parts
    are at or above ``boundary``). It shares its layers (and so its weights)
    with ``base``: fine-tuning it fine-tunes ``base``. Works for non-sequential
    bases too (ResNet, Inception), as long as every path to ``top`` passes
    through ``boundary``.
    """
    import keras

    names = [layer.name for layer in base.layers]
    parts = registry.layer_parts(top)
    if boundary not in names or any(p not in names or names.index(p) < names.index(boundary) for p in parts) \
            or names.index(parts[-1]) <= names.index(boundary):
        raise ValueError(f"need boundary below top among the layers of {base.name}, got {boundary!r} -> {top!r}")
    return keras.Model(base.get_layer(boundary).output, tap(base, top), name=f"{base.name}_above_{boundary}")


# Output names of a model that also scores how far out of scope an image is.
PROBABILITIES, UNKNOWN_SCORE = "probabilities", "unknown_score"


def end_to_end_model(spec: Spec, weights: ResolvedWeights, head, name: str, seed: int, base=None, unknown=None):
    """raw RGB uint8 images -> probabilities: preprocessing + base + ``head``.

    Args:
        spec, weights, seed: as for :func:`build_base`.
        head: the classifier on ``spec.head_layer`` activations.
        name: Keras model name (``vggtl_<run name>``).
        base: the base to use (e.g. with fine-tuned top blocks); by default
            a new one with ``weights``.
        unknown: a fitted :class:`~vggtl.unknown.detector.Detector`: the
            model then returns ``{"probabilities", "unknown_score"}``, both
            from the one forward pass.
    """
    import keras

    size = spec.image_size
    inputs = keras.Input((size, size, 3), name="image")
    if unknown is None:
        features = feature_model(spec, weights, spec.head_layer, seed, base=base)
        return keras.Model(inputs, head(features(inputs)), name=name)
    from vggtl.unknown.detector import keras_score

    features = feature_model(spec, weights, [spec.head_layer, registry.STATS_LAYER], seed, base=base)
    maps, stats = features(inputs)
    return keras.Model(inputs, {PROBABILITIES: head(maps), UNKNOWN_SCORE: keras_score(unknown, maps, stats)}, name=name)


def split_outputs(predicted):
    """A model's prediction as the predict loops take it: the probabilities, or
    for a model with the unknown score ``(probabilities, unknown scores)``."""
    return (predicted[PROBABILITIES], predicted[UNKNOWN_SCORE]) if isinstance(predicted, dict) else predicted


# Rows per call of predict_eagerly by default: images (loops over stored maps
# pass their own, vggtl.training.fit.PREDICT_BATCH). A model called eagerly
# holds every layer's activations until the call returns (a traced one frees
# them as it goes):
# measured with `vggtl predict` on 16 images, VGG16 at 224 px (2-core VM),
# peak 1.33 GB at 8 rows a call against 1.32 GB through Keras' predict
# (1.85 GB at 16 rows, 1.05 GB at 4), the same wall time (8.8-10.1 s vs 9.1-9.4 s).
IMAGES_PER_CALL = 8


def predict_eagerly(model, x, batch_size: int = IMAGES_PER_CALL):
    """What ``model.predict(x)`` returns, the model called eagerly.

    Keras' ``predict`` traces a function for every model it is given, and a
    command predicts with a model once. For VGG16 at 224 px the convolutions
    dominate either way (`vggtl predict` on 3 images: wall ratio 1.00,
    ``farm-bench -n 6``; outputs equal, max difference 0.0); for a small model
    (a head on stored features, a tiny test network) the trace was most of
    the cost (the predict, inspect-batch, Grad-CAM and features-runtime
    tests: 0.89x paired, ``farm-bench -n 6``).

    Args:
        model: a Keras model (``training=False``: BatchNormalization and
            Dropout in inference mode, as in ``predict``).
        x: an array or a dict of arrays (a model with named inputs), read
            ``batch_size`` rows at a time, or an iterable of such batches.
        batch_size: rows per call when ``x`` is an array or a dict (see
            :data:`IMAGES_PER_CALL`).

    Returns:
        One array per output, in the model's output structure (an array, or
        a dict of them), rows in the order of ``x``.
    """
    import keras

    batches = x
    if isinstance(x, dict) or hasattr(x, "shape"):
        rows = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        batches = (keras.tree.map_structure(lambda a: a[i : i + batch_size], x) for i in range(0, rows, batch_size))
    outs = [keras.tree.map_structure(np.asarray, model(batch, training=False)) for batch in batches]
    if not outs:
        return keras.tree.map_structure(lambda t: np.zeros((0, *t.shape[1:]), np.float32), model.output)
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outs)


def batch_predictor(model, batch_size: int = IMAGES_PER_CALL):
    """``model`` as the predict loops take it (:func:`vggtl.data.iter_probabilities`):
    images -> probabilities, or ``(probabilities, unknown scores)`` for a model
    that scores out-of-scope images; called eagerly (:func:`predict_eagerly`)."""
    return lambda images: split_outputs(predict_eagerly(model, images, batch_size))


# Input names of a model on stored features that also scores how far out of scope an image is.
FEATURES_INPUT = "features"


def scored_head(spec: Spec, base, head, layer: str, unknown, name: str = "scored_head"):
    """The final model on stored features with the unknown score beside it:
    ``[layer's activations, channel statistics]`` -> ``{"probabilities",
    "unknown_score"}`` (inputs named ``features`` and ``channel_stats``).

    What an artifact trained on a converted base's features
    (``extract.runtime``) carries as ``head.keras``: that base outputs both
    inputs in one pass. With fine-tuning (``layer`` below ``spec.head_layer``)
    the tuned top blocks of ``base`` run once and feed the head and the score.
    """
    import keras

    from vggtl.unknown.detector import keras_score

    features = keras.Input(spec.feature_shape(layer), name=FEATURES_INPUT)
    stats = keras.Input(spec.feature_shape(registry.STATS_LAYER), name=registry.STATS_LAYER)
    maps = features if layer == spec.head_layer else top_model(base, layer, spec.head_layer)(features)
    return keras.Model([features, stats], {PROBABILITIES: head(maps), UNKNOWN_SCORE: keras_score(unknown, maps, stats)},
                       name=name)


def probabilities_model(model, spec: Spec):
    """``model`` itself, or for a model with an unknown score a model of its
    probabilities alone, rebuilt from the same layers (shared weights) in the
    shape a model without the score has: a chain Grad-CAM can replay, which
    tiles and the ImageNet checks run like any other."""
    import keras

    if not isinstance(model.output, dict):
        return model
    features = next(layer for layer in model.layers if isinstance(layer, keras.Model) and len(layer.outputs) == 2)
    head = model.output[PROBABILITIES]._keras_history.operation
    both = next(layer for layer in features.layers if isinstance(layer, keras.Model))  # the base, cut at both taps
    base = keras.Model(both.input, both.outputs[0], name=spec.name)
    inputs = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(inputs, head(feature_model(spec, None, spec.head_layer, 0, base=base)(inputs)), name=model.name)

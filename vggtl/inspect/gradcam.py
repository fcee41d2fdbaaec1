"""Grad-CAM: where in an image a convolutional classifier looks for a class.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a conv layer by
the spatially averaged gradient of the class score with respect to them, sums
them and keeps the positive part: a coarse ``(h, w)`` map, here normalised to
[0, 1], of the regions that raise the score of that class.

vggtl artifacts nest their conv layers two models deep (``image`` ->
``vgg16_<layer>`` -> ``vgg16`` -> ``block5_conv3``, then ``head``), so a plain
``keras.Model(model.inputs, [model.get_layer(name).output, model.output])``
cannot reach them. :func:`gradcam` instead replays the model eagerly on a
``tf.GradientTape``, unit by unit: nested models whose layers form a chain
are expanded into their layers; a nested network that is not a chain
(ResNet, Inception, MobileNet) runs as one unit, through a two-output copy
of itself when it holds the explained layer. The replay must reproduce the
model's own output, so a graph it does not understand is refused rather than
explained wrongly. A mirror-averaged feature model (``backbone.mirror_average``,
the base called on the image and on its mirror image) is replayed through its
own graph: each call of the layer is weighted by its own gradients, and the
mirror call's map is flipped back before the two are summed. The same code
serves the Keras ``VGG16(include_top=True)`` ImageNet classifier.

The score differentiated is the class *logit* when the last layer is a
softmax ``Dense`` (as in the paper: softmax saturates and mixes in the other
classes), else the model output for the class.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vggtl.data import DecodeSettings

DEFAULT_CONV_LAYER = "block5_conv3"
DEFAULT_ALPHA = 0.4
DEFAULT_MAX_SIDE = 1024
COLORMAP = "jet"
# matplotlib's "jet" (its segment data: (position, value) per channel), for a
# table of 256 colours as matplotlib makes it: the overlays without importing
# matplotlib (~0.5 s) in train and predict.
_JET_SEGMENTS = (((0, 0), (0.35, 0), (0.66, 1), (0.89, 1), (1, 0.5)),
                 ((0, 0), (0.125, 0), (0.375, 1), (0.64, 1), (0.91, 0), (1, 0)),
                 ((0, 0.5), (0.11, 1), (0.34, 1), (0.65, 0), (1, 0)))
_JET_COLORS = 256
# The replay must match the model's own output: anything larger means the
# graph is not the chain we replayed (float32 round-off is ~1e-6).
REPLAY_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- graph replay


def leaf_layers(model) -> list:
    """The layers of ``model`` in call order, nested models expanded, inputs dropped.

    Args:
        model: a Keras ``Functional`` or ``Sequential`` model whose layers
            (and those of every nested model) form a single chain.

    Returns:
        List of Keras layers that are not models.
    """
    import keras

    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            leaves.extend(leaf_layers(layer))
        else:
            leaves.append(layer)
    return leaves


def is_chain(model) -> bool:
    """True when ``model`` is a single path of layers (VGG, vggtl heads); False
    for networks with merges or several inputs/outputs (ResNet's adds,
    Inception's concatenations). A layer applied twice is caught later, by
    the replay's check against the model's own output."""
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            # A nested model's .input is its own input, not what feeds it.
            if len(layer.inputs) != 1 or len(layer.outputs) != 1:
                return False
        elif isinstance(layer.input, (list, tuple)):
            return False
    return True


def replay_units(model) -> list:
    """The units :func:`gradcam` replays ``model`` with, in call order: leaf
    layers, with nested chain models expanded, and whole nested networks that
    are not chains."""
    import keras

    units = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and is_chain(layer):
            units.extend(replay_units(layer))
        else:
            units.append(layer)
    return units


def conv_layer_names(model) -> list[str]:
    """Names of all ``Conv2D`` layers of ``model``, nested models included, in call order."""
    import keras

    return [layer.name for layer in leaf_layers(model) if isinstance(layer, keras.layers.Conv2D)]


def default_layer(model, preferred: str | None = None) -> str:
    """The layer Grad-CAM explains by default: ``preferred`` (a backbone's
    ``gradcam_layer``, e.g. ``block5_conv3`` for vgg16, ``conv5_block3_out``
    for resnet50) when ``model`` has it, else :func:`last_conv_layer`."""
    if preferred is not None and preferred in {layer.name for layer in leaf_layers(model)}:
        return preferred
    return last_conv_layer(model)


def last_conv_layer(model) -> str:
    """Name of the last ``Conv2D`` layer of ``model`` (the usual Grad-CAM layer).

    Raises:
        ValueError: ``model`` has no ``Conv2D`` layer.
    """
    names = conv_layer_names(model)
    if not names:
        raise ValueError(f"model {model.name!r} has no Conv2D layer; Grad-CAM needs a convolutional layer")
    return names[-1]


def _is_softmax_dense(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax"


def _probe(network, conv_layer: str):
    """``(lower, upper, both)`` models of ``network`` around ``conv_layer``:
    input -> its activations, and those activations -> the network's output;
    when the output also depends on paths around the layer (upper cannot be
    cut), ``upper`` is None and ``both`` gives the two outputs from the input."""
    import keras

    probes = _PROBES.setdefault(network, {})
    if conv_layer not in probes:
        activations = network.get_layer(conv_layer).output
        # A model built with a one-element output list returns a list: unwrap it
        # (the next layer expects a tensor; Keras warns about the structure otherwise).
        output = _single(network.outputs)
        try:
            probes[conv_layer] = (keras.Model(network.inputs, activations), keras.Model(activations, output), None)
        except Exception:  # noqa: BLE001 - Keras says "disconnected" in several ways
            probes[conv_layer] = (None, None, keras.Model(network.inputs, [activations, output]))
    return probes[conv_layer]


def _run_probe(network, conv_layer: str, x, watch):
    """``(activations, output)`` of ``network`` on ``x``. The caller's tape records
    from the activations up only (``watch``), so the backward pass stops there
    instead of running through every layer below; when the network cannot be
    cut there, from ``x`` up."""
    lower, upper, both = _probe(network, conv_layer)
    if upper is None:
        watch(x)
        return both(x, training=False)
    activations = lower(x, training=False)
    watch(activations)
    return activations, upper(activations, training=False)


_PROBES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _replay(units, x, conv_layer: str, watch):
    """Run ``units`` on ``x``; return (calls, class scores, model output), where
    ``calls`` lists ``(activations, mirrored)`` for every call of ``conv_layer``
    (one, except in a mirror-averaged model: see :func:`_replay_graph`).
    ``watch`` is the caller's tape's: every call's activations are watched, so
    the operations from them to the scores are recorded (and nothing below)."""
    import keras
    import tensorflow as tf

    calls = []
    for i, unit in enumerate(units):
        if i == len(units) - 1 and _is_softmax_dense(unit):
            # Pre-softmax logits: Dense without its activation.
            scores = tf.matmul(x, unit.kernel)
            if unit.use_bias:
                scores = scores + unit.bias
            return calls, scores, tf.nn.softmax(scores, axis=-1)
        if isinstance(unit, keras.Model) and conv_layer in {layer.name for layer in unit.layers}:
            activations, x = _run_probe(unit, conv_layer, x, watch)
            calls.append((activations, False))
            continue
        if isinstance(unit, keras.Model) and conv_layer in {layer.name for layer in leaf_layers(unit)}:
            unit_calls, x = _replay_graph(unit, x, conv_layer, watch)
            calls += unit_calls
            continue
        x = unit(x, training=False)
        if unit.name == conv_layer:
            watch(x)
            calls.append((x, False))
    return calls, x, x


def _replay_graph(network, x, conv_layer: str, watch):
    """Run ``network`` (not a chain, e.g. vggtl's mirror-averaged feature model,
    which calls its base on the image and on the mirror image) through its own
    graph, the nested model holding ``conv_layer`` replaced by its two-output
    probe at every call. Returns ``([(activations, mirrored), ...], output)``;
    ``mirrored``: that call's input is the output of the image-flipping layers
    (:data:`vggtl.backbones.build.MIRROR_IMAGE`), so its map is mirrored too."""
    import keras

    from vggtl.backbones.build import MIRROR_IMAGE, mirror_output_name

    flipped, calls, flip_output = set(), [], mirror_output_name(MIRROR_IMAGE)

    def call(op, *args, **kwargs):
        if isinstance(op, keras.Model) and conv_layer in {layer.name for layer in op.layers}:
            activations, out = _run_probe(op, conv_layer, args[0], watch)
            calls.append((activations, id(args[0]) in flipped))
            return out
        out = op(*args, **kwargs)
        if getattr(op, "name", "") == flip_output:
            flipped.add(id(out))
        return out

    # Keras' own graph walk (keras.src.ops.function.Function); the replay check
    # against the model's output guards against any change in it.
    output = network._run_through_graph(x, operation_fn=lambda op: op, call_fn=call)
    return calls, _single(output)


def _single(outputs):
    """``outputs[0]`` for a one-element list or tuple, else ``outputs`` as it is."""
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs


# --------------------------------------------------------------------------- heatmap


def _check_image(model, image_uint8) -> np.ndarray:
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image_uint8 must have shape (height, width, 3), got {image.shape}")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and image.shape[:2] != expected:
        raise ValueError(
            f"image_uint8 is {image.shape[0]}x{image.shape[1]} but model {model.name!r} takes "
            f"{expected[0]}x{expected[1]} images; decode it at the model's size first"
        )
    return image


def gradcam(model, image_uint8, class_index: int, conv_layer: str = DEFAULT_CONV_LAYER, preprocess=None) -> np.ndarray:
    """Grad-CAM heatmap of ``class_index`` for one image.

    Args:
        model: Keras classifier: a chain of layers and nested models (vggtl
            artifacts, ``keras.applications.VGG16``); nested networks that
            are not chains must hold ``conv_layer`` directly, if at all.
            Its output is ``(batch, n_classes)``.
        image_uint8: ``(height, width, 3)`` RGB image at the model's input
            size, values 0-255 (what :func:`vggtl.data.decode_image` returns).
        class_index: output index of the class to explain, in
            ``[0, n_classes)``.
        conv_layer: name of the convolutional layer whose activations are
            weighted, anywhere in the nested models; see
            :func:`conv_layer_names`. Deeper layers give coarser, more
            class-specific maps.
        preprocess: callable applied to the float32 ``(1, h, w, 3)`` batch
            before the model, e.g. ``keras.applications.vgg16.preprocess_input``
            for the Keras ImageNet model; None when the model preprocesses
            itself (vggtl artifacts).

    Returns:
        ``(h, w)`` float32 array in [0, 1] at the resolution of ``conv_layer``
        (14x14 for ``block5_conv3`` at 224 px); all zeros when no region
        raises the class score.

    Raises:
        ValueError: unknown ``conv_layer``, ``class_index`` out of range, an
            image of the wrong shape, or a model the replay cannot reproduce.
    """
    return gradcams(model, [image_uint8], [class_index], conv_layer, preprocess)[0]


def gradcams(model, images, class_indices, conv_layer: str = DEFAULT_CONV_LAYER, preprocess=None) -> list[np.ndarray]:
    """:func:`gradcam` of several images in one forward and one backward pass.

    In inference every image's score depends on its own activations only, so
    the gradient of the sum of the images' class scores gives each image its
    own gradients: the same maps as one call per image, at the cost of one.
    ``images`` and ``class_indices`` pair up; arguments as for :func:`gradcam`.
    """
    from vggtl import tfquiet

    tf = tfquiet.load()
    if isinstance(model.output, dict):  # probabilities and the unknown score
        raise ValueError(f"model {model.name!r} returns {sorted(model.output)}; explain its probabilities alone: "
                         "artifact.load(path).load_model() gives that model")
    if len(images) != len(class_indices) or not len(images):
        raise ValueError(f"need one class index per image, got {len(images)} image(s) and {len(class_indices)} index(es)")
    batch = np.stack([_check_image(model, image) for image in images]).astype("float32")
    if conv_layer not in {layer.name for layer in leaf_layers(model)}:
        raise ValueError(
            f"conv_layer {conv_layer!r} is not a layer of model {model.name!r}; "
            f"its conv layers are: {', '.join(conv_layer_names(model)) or 'none'}"
        )
    x = tf.convert_to_tensor(batch if preprocess is None else preprocess(batch), dtype=tf.float32)
    with tf.GradientTape() as tape:
        # The backbone's weights are frozen (not watched by default): the replay
        # watches the Grad-CAM layer's activations, so what is above them is recorded.
        calls, scores, output = _class_scores(model, x, conv_layer, class_indices, tape.watch)
        score = tf.reduce_sum(scores)
    _check_replay(model, x, output, conv_layer)
    grads = tape.gradient(score, [activations for activations, _ in calls])
    if all(g is None for g in grads):
        raise ValueError(f"the class score does not depend on layer {conv_layer!r}; choose an earlier layer")
    return [_weighted_maps(tf, calls, grads, i) for i in range(len(batch))]


INPUT_LAYER = "(input)"  # what :func:`gradcams_at_input` explains, as a key of the replay check


def gradcams_at_input(model, maps, class_indices) -> list[np.ndarray]:
    """Grad-CAM of ``model`` at its own input, for several maps in one pass.

    ``maps`` are a conv layer's activations, such as the feature maps vggtl
    caches (a head's input): the map of each is weighted by the mean
    gradient of its class score, as :func:`gradcams` does inside a network,
    but no convolution runs. A head on VGG16's ``block5_pool`` at 224 px
    gives 7x7 maps.

    Args:
        model: a Keras model on ``(h, w, channels)`` maps, e.g. a trained head.
        maps: ``(n, h, w, channels)`` activations.
        class_indices: one output index per map, in ``[0, n_classes)``.

    Returns:
        ``n`` ``(h, w)`` float32 arrays in [0, 1].

    Raises:
        ValueError: maps of the wrong shape, a class index out of range, or a
            model the replay cannot reproduce.
    """
    from vggtl import tfquiet

    tf = tfquiet.load()
    maps = np.asarray(maps, dtype=np.float32)
    expected = tuple(model.input_shape[1:])
    if maps.ndim != 4 or maps.shape[1:] != expected or len(maps) != len(class_indices) or not len(maps):
        raise ValueError(f"need (n, {', '.join(map(str, expected))}) maps and one class index per map, got maps of "
                         f"shape {maps.shape} and {len(class_indices)} index(es)")
    x = tf.convert_to_tensor(maps)
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, scores, output = _replay(replay_units(model) if is_chain(model) else [model], x, INPUT_LAYER, tape.watch)
        score = tf.reduce_sum(_of_classes(tf, scores, class_indices))
    _check_replay(model, x, output, INPUT_LAYER)
    grads = tape.gradient(score, x)
    return [_weighted_maps(tf, [(x, False)], [grads], i) for i in range(len(maps))]


def _of_classes(tf, scores, class_indices):
    """Each row's score of its class (``class_indices`` checked against the scores' width)."""
    n_classes = int(scores.shape[-1])
    for class_index in class_indices:
        if not 0 <= int(class_index) < n_classes:
            raise ValueError(f"class_index must be in [0, {n_classes}), got {class_index}")
    return tf.gather(scores, [int(c) for c in class_indices], axis=1, batch_dims=1)


def _class_scores(model, x, conv_layer: str, class_indices, watch):
    """Replay ``model`` on ``x`` under the caller's tape: the calls of
    ``conv_layer`` (activations, mirrored), each image's score of its class, the output."""
    import tensorflow as tf

    try:
        units = replay_units(model) if is_chain(model) else [model]
        calls, scores, output = _replay(units, x, conv_layer, watch)
    except Exception as exc:  # noqa: BLE001 - a layer fed the wrong tensors raises anything
        # Keras' messages embed whole tensors: keep the first line.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"model {model.name!r} cannot be replayed layer by layer ({type(exc).__name__}: {first}); "
            "Grad-CAM here supports chains of layers and nested networks"
        ) from None
    if not calls:
        raise ValueError(
            f"layer {conv_layer!r} sits inside a nested part of model {model.name!r} that is not a chain; "
            "choose a layer of the backbone itself"
        )
    return calls, _of_classes(tf, scores, class_indices), output


def _weighted_maps(tf, calls, grads, index: int) -> np.ndarray:
    """Image ``index``'s maps of each call weighted by their mean gradient, summed,
    the positive part normalised to [0, 1] (all zeros when no region raises the score)."""
    cam = 0.0
    for (activations, mirrored), g in zip(calls, grads):
        if g is None:
            continue
        weights = tf.reduce_mean(g[index], axis=(0, 1))  # (channels,): importance of each feature map
        part = tf.reduce_sum(activations[index] * weights[None, None, :], axis=-1).numpy()
        # A mirror-image call looks at the mirrored picture: flip its map back.
        cam = cam + (part[:, ::-1] if mirrored else part)
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)


# (model -> conv layers) whose replay already reproduced the model's output.
# Whether the replay matches is a property of the graph, not of the image:
# checking it once per model spares a second pass of the base per image.
_REPLAY_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _check_replay(model, x, output, conv_layer: str) -> None:
    if conv_layer in _REPLAY_CHECKED.get(model, ()):
        return
    # One image proves it (a property of the graph): a second pass of a whole batch would not prove more.
    direct = np.asarray(model(x[:1], training=False))
    diff = float(np.max(np.abs(direct - np.asarray(output)[:1])))
    if not diff <= REPLAY_TOLERANCE:
        raise ValueError(
            f"replaying model {model.name!r} layer by layer differs from the model by {diff:.3g}; "
            "Grad-CAM here supports chains of layers and nested networks"
        )
    _REPLAY_CHECKED.setdefault(model, set()).add(conv_layer)


# --------------------------------------------------------------------------- overlay


def colorize(heatmap, size) -> np.ndarray:
    """``heatmap`` resized to ``size`` = (width, height) and mapped through the jet colormap, uint8 RGB."""
    from PIL import Image

    width, height = size
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), "F").resize((width, height), Image.BILINEAR)
    values = np.clip(np.asarray(resized), 0.0, 1.0)
    # As matplotlib looks a value up: floor(value * N), 1.0 in the last colour.
    index = np.minimum((values * _JET_COLORS).astype(np.int64), _JET_COLORS - 1)
    return (_jet_table()[index] * 255.0 + 0.5).astype(np.uint8)


@functools.cache
def _jet_table() -> np.ndarray:
    """``(256, 3)`` RGB in [0, 1]: matplotlib's ``jet`` colormap."""
    x = (_JET_COLORS - 1) * np.linspace(0.0, 1.0, _JET_COLORS)
    channels = []
    for segments in _JET_SEGMENTS:
        # matplotlib's _create_lookup_table, step for step: np.interp rounds a few colours the other way.
        at, value = (np.array(column, dtype=float) for column in zip(*segments))
        at = at * (_JET_COLORS - 1)
        ind = np.searchsorted(at, x)[1:-1]
        distance = (x[1:-1] - at[ind - 1]) / (at[ind] - at[ind - 1])
        channels.append(np.concatenate([[value[0]], distance * (value[ind] - value[ind - 1]) + value[ind - 1], [value[-1]]]))
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def heatmap_window(heatmap, window, side: int) -> np.ndarray:
    """The part of ``heatmap`` (covering the model's ``side`` x ``side`` input)
    that lies over ``window`` = (left, top, width, height) of that input: under
    ``data.resize: pad`` the picture fills only that window, the rest is padding."""
    from PIL import Image

    left, top, width, height = window
    full = Image.fromarray(np.asarray(heatmap, dtype=np.float32), "F").resize((side, side), Image.BILINEAR)
    return np.asarray(full)[top : top + height, left : left + width]


def overlay(original_rgb, heatmap, alpha: float = DEFAULT_ALPHA, box=None) -> np.ndarray:
    """Blend a colorized heatmap over an image.

    Args:
        original_rgb: ``(H, W, 3)`` uint8 RGB image, any size.
        heatmap: ``(h, w)`` float array in [0, 1], e.g. from :func:`gradcam`.
        alpha: weight of the heatmap colors, in [0, 1]; 0 returns the image
            unchanged, 1 the colors alone.
        box: ``(left, top, right, bottom)`` region of ``original_rgb`` the
            model saw (the central square for ``data.resize: center_crop``);
            None means the whole image. Outside it the image is left as is.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: bad shapes, ``alpha`` outside [0, 1] or a box outside the image.
    """
    original = np.asarray(original_rgb)
    heat = np.asarray(heatmap)
    if original.ndim != 3 or original.shape[-1] != 3 or original.dtype != np.uint8:
        raise ValueError(f"original_rgb must be a (height, width, 3) uint8 array, got {original.dtype} {original.shape}")
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = original.shape[:2]
    left, top, right, bottom = box if box is not None else (0, 0, width, height)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"box {box} is not inside the {width}x{height} image")
    out = original.astype(np.float32)
    colors = colorize(heat, (right - left, bottom - top)).astype(np.float32)
    region = out[top:bottom, left:right]
    out[top:bottom, left:right] = (1.0 - alpha) * region + alpha * colors
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- files


def write(out_dir, stem: str, original_rgb, heatmap, box=None, alpha: float = DEFAULT_ALPHA, max_side: int = DEFAULT_MAX_SIDE):
    """Save ``<stem>_gradcam.jpg`` (overlay on the original) and ``<stem>_gradcam.npy`` (raw heatmap).

    Args:
        out_dir: directory, created if missing.
        stem: file name stem, usually the input image's.
        original_rgb: the full decoded image, ``(H, W, 3)`` uint8.
        heatmap: ``(h, w)`` float array in [0, 1] from :func:`gradcam`.
        box: region of ``original_rgb`` the model saw, see :func:`overlay`.
        alpha: heatmap weight in the overlay.
        max_side: the overlay's longer side is at most this many pixels
            (the original is downscaled first, never upscaled).

    Returns:
        ``(jpg_path, npy_path)`` as `pathlib.Path`.
    """
    from PIL import Image

    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    original = np.asarray(original_rgb)
    height, width = original.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        original = np.asarray(Image.fromarray(original).resize(size, Image.BILINEAR, reducing_gap=3.0))
        if box is not None:
            box = _scale_box(box, size[0] / width, size[1] / height, size)
    jpg = out_dir / f"{stem}_gradcam.jpg"
    npy = out_dir / f"{stem}_gradcam.npy"
    Image.fromarray(overlay(original, heatmap, alpha, box)).save(jpg, quality=92)
    np.save(npy, np.asarray(heatmap, dtype=np.float32))
    return jpg, npy


def _scale_box(box, sx: float, sy: float, size) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    width, height = size
    new = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
    # Keep at least one pixel and stay inside the image after rounding.
    left, top = min(new[0], width - 1), min(new[1], height - 1)
    return (left, top, max(left + 1, min(new[2], width)), max(top + 1, min(new[3], height)))


def unique_stem(path, used: set) -> str:
    """``path``'s stem, suffixed ``-2``, ``-3``... if already in ``used`` (which is updated).

    Two inputs named ``a/cat.jpg`` and ``b/cat.jpg`` must not overwrite each
    other's heatmaps in one output directory.
    """
    stem = Path(path).stem
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


@dataclass(frozen=True)
class FileExplainer:
    """Grad-CAM of image files, each written as ``<stem>_gradcam.jpg`` (the
    heatmap over the original image) and ``<stem>_gradcam.npy`` in ``out_dir``.

    Attributes:
        model: the classifier, see :func:`gradcam`.
        out_dir: directory the files are written to.
        decode: how the model's input was made from a file: ``resize``
            (``center_crop`` overlays the heatmap on the central square only,
            ``trim_pad`` on the content box, the padding cut off the heatmap),
            the ``background`` transparent pixels are composited over, and
            the ``max_pixels`` guard of the full-size decode.
        conv_layer: layer to explain; None means :func:`last_conv_layer`
            (vggtl.predict passes :func:`default_layer`).
        preprocess: see :func:`gradcam`.
    """

    model: Any
    out_dir: Path
    decode: DecodeSettings
    conv_layer: str | None = None
    preprocess: Any = None

    def explain(self, path, image_uint8, class_index: int, stem: str) -> dict:
        """Explain ``class_index`` for one file.

        Args:
            path: the image file; decoded again at full size for the overlay.
            image_uint8: the same image as decoded for the model.
            class_index: output index of the class to explain.
            stem: file name stem, see :func:`unique_stem`.

        Returns:
            ``{"layer", "jpg", "npy"}`` (paths as strings).

        Raises:
            vggtl.data.UndecodableImage: the full-size decode failed.
        """
        from PIL import Image

        from vggtl import data
        from vggtl.inspect import tiles

        layer = self.conv_layer or last_conv_layer(self.model)
        heatmap = gradcam(self.model, image_uint8, class_index, layer, self.preprocess)
        resize, background = self.decode.resize, self.decode.background
        original = tiles.decode_full_rgb(path, background, self.decode.max_pixels)
        box = data.model_box(Image.fromarray(original), resize, background)
        if resize in data.PADDED_POLICIES:
            window = data.pad_window((box[2] - box[0], box[3] - box[1]), image_uint8.shape[0])
            heatmap = heatmap_window(heatmap, window, image_uint8.shape[0])
        jpg, npy = write(self.out_dir, stem, original, heatmap, box=box)
        return {"layer": layer, "jpg": str(jpg), "npy": str(npy)}

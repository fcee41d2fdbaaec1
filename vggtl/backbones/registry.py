"""The convolutional bases vggtl can use, as data: sizes, layers, preprocessing, weight files.

A new backbone is one :class:`Architecture` entry in :data:`ARCHITECTURES`;
nothing else in vggtl names a backbone. Import-light on purpose (no
TensorFlow, no h5py): ``config`` validates ``backbone.*`` against this table
and ``extract`` works out the stored feature shapes from it before deciding
whether TensorFlow is needed at all.

Feature-map sides are computed from the input side with the exact
downsampling arithmetic of each Keras application (a test checks every
listed layer against the real models at several sizes), because the naive
``size // stride`` is wrong for valid-padded networks such as Inception V3.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Downsampling steps, as functions of the input side:
#   floor2 - 2x2 max-pool, stride 2, valid padding (VGG)
#   ceil2  - stride-2 layer with 'same'-like padding (ResNet, MobileNetV2)
#   v3s2   - 3x3 kernel, stride 2, valid padding (Inception V3)
#   v3     - 3x3 kernel, stride 1, valid padding (Inception V3)
_STEPS = {
    "floor2": lambda side: side // 2,
    "ceil2": lambda side: (side + 1) // 2,
    "v3s2": lambda side: (side - 3) // 2 + 1,
    "v3": lambda side: side - 2,
}
_INCEPTION_STEM = ("v3s2", "v3", "v3s2", "v3", "v3s2")  # conv, conv, pool, conv, pool -> mixed0..2


@dataclass(frozen=True)
class Layer:
    """A layer whose activations can be cached.

    Attributes:
        steps: downsampling steps from the input (keys of ``_STEPS``).
        channels: feature channels.
    """

    steps: tuple[str, ...]
    channels: int

    def side(self, image_size: int) -> int:
        side = image_size
        for step in self.steps:
            side = _STEPS[step](side)
        return side


@dataclass(frozen=True)
class Architecture:
    """One supported convolutional base.

    Attributes:
        name: the ``backbone.name`` value.
        application: ``keras.applications`` constructor, e.g. ``'ResNet50'``.
        module: ``keras.applications`` module holding its ``preprocess_input``.
        preprocessing: ``'caffe'`` (RGB->BGR, minus ImageNet means) or
            ``'tf'`` (scale to [-1, 1]), as that ``preprocess_input`` does.
        default_size: input side the ImageNet weights were trained at.
        min_size: smallest input side Keras accepts.
        layers: cacheable layers, bottom to top.
        default_layer: the usual bottleneck (the top of the conv base).
        finetune_boundaries: frozen boundary for ``finetune.blocks`` = 1, 2, ...
            (the blocks above it are trained).
        gradcam_layer: the layer Grad-CAM explains by default.
        style_layers: (property) the lower layers whose channel statistics
            the unknown-image detector reads (:data:`STATS_LAYER`).
        notop_file, notop_md5: Keras' ``include_top=False`` weights file and
            the md5 Keras pins for it (None where Keras pins none). A network
            whose weights also come from elsewhere has a provider in
            :data:`vggtl.backbones.resolve.OFFLINE_WEIGHTS`.
        block_convs: convolutions per block of a plain VGG stack (VGG16: 2,
            2, 3, 3, 3), which vggtl can build at another width; empty for
            the others.
        width: fraction of the channels of every convolution (1.0: the
            network itself; see :meth:`narrowed`).
    """

    name: str
    application: str
    module: str
    preprocessing: str
    default_size: int
    min_size: int
    layers: dict[str, Layer]
    default_layer: str
    finetune_boundaries: tuple[str, ...]
    gradcam_layer: str
    notop_file: str
    notop_md5: str | None
    block_convs: tuple[int, ...] = ()
    width: float = 1.0

    def narrowed(self, width: float) -> "Architecture":
        """This network with ``width`` of the channels of every layer (at least
        one each): same layers, names and grid sizes, so every stage runs on
        it as on the full network. Only random weights exist for it (``backbone.width``):
        the tests' tiny runs use 1/8 of VGG16, 64 times fewer weights to draw,
        save, hash and convert. Only a plain VGG stack (``block_convs``) can
        be narrowed: vggtl builds it layer by layer (:func:`vggtl.backbones.build.build_base`).
        """
        if width == 1.0:
            return self
        if not self.block_convs:
            raise ValueError(f"{self.name} cannot be narrowed; only {', '.join(NARROWABLE)} can")
        layers = {name: Layer(layer.steps, max(1, round(layer.channels * width))) for name, layer in self.layers.items()}
        return dataclasses.replace(self, layers=layers, width=width)

    @property
    def style_layers(self) -> tuple[str, ...]:
        """Up to four cacheable layers ending at the first fine-tuning boundary
        (VGG16: block1_pool..block4_pool; the widest dropped while they hold
        more than :data:`STYLE_CHANNELS_MAX` channels): below every block fine-tuning can
        change, so their statistics are the same in every model of this base.
        They carry what the image looks like (photo texture, flat clip-art
        colour) more than what it shows; docs/unknown.md has the measurements."""
        order = list(self.layers)
        chosen = order[: order.index(self.finetune_boundaries[0]) + 1][-4:]
        # Wide layers (Inception's 2048-channel mixed9) make the covariance the
        # Mahalanobis distance inverts too large for tens of images: drop from the top.
        while len(chosen) > 2 and sum(self.layers[name].channels for name in chosen) > STYLE_CHANNELS_MAX:
            chosen.pop()
        return tuple(chosen)

    def stats_channels(self) -> int:
        """Width of the :data:`STATS_LAYER` vector: mean and std of every style layer's channels."""
        return 2 * sum(self.layers[name].channels for name in self.style_layers)

    @property
    def notop_url(self) -> str:
        return f"{KERAS_WEIGHTS_URL}{self.module}/{self.notop_file}"

    @property
    def preprocessing_description(self) -> str:
        """Recorded in store settings: a change of preprocessing invalidates caches."""
        what = {"caffe": "RGB->BGR, minus ImageNet means", "tf": "scaled to [-1, 1]"}[self.preprocessing]
        return f"keras.applications.{self.module}.preprocess_input ({self.preprocessing}: {what})"

    def smallest_input(self, layer: str) -> int:
        """Smallest square input side for which ``layer`` (or every part of a
        joined ``'a+b'`` layer) has a non-empty output."""
        return next(size for size in range(1, 4096) if all(self.layers[p].side(size) >= 1 for p in layer_parts(layer)))

    def feature_shape(self, layer: str, image_size: int) -> tuple[int, int, int]:
        """Output shape of ``layer`` for square ``image_size`` inputs, e.g. (7, 7, 512).

        A joined layer ``'block4_pool+block5_pool'`` has the grid of its last
        (top) part and the channels of all its parts: (7, 7, 1024).
        """
        parts = layer_parts(layer)
        side = self.layers[parts[-1]].side(image_size)
        return (side, side, sum(self.layers[p].channels for p in parts))


JOIN = "+"
STYLE_CHANNELS_MAX = 2048
# A stored "layer" that is not one of the network's: per-channel mean and
# standard deviation (log1p) of each style layer, as a 1 x 1 x C map, computed
# in the same forward pass as the head's layer (vggtl.backbones.build.tap).
STATS_LAYER = "channel_stats"


def layer_parts(layer: str) -> tuple[str, ...]:
    """The layers a (possibly joined) layer name stands for: ``'block4_pool+block5_pool'``
    -> ``('block4_pool', 'block5_pool')``; ``'block5_pool'`` -> ``('block5_pool',)``.

    A joined layer is the channel concatenation of its parts' maps, each lower
    part max-pooled onto the grid of the last one (see
    :func:`vggtl.backbones.build.tap`): several depths of the network in one
    cached tensor, which the head and every later stage read as one layer.
    """
    return tuple(layer.split(JOIN))


def keras_name(layer: str) -> str:
    """``layer`` as a Keras layer/model name ('+' is not allowed in TensorFlow
    name scopes): ``'block4_pool+block5_pool'`` -> ``'block4_pool_and_block5_pool'``."""
    return layer.replace(JOIN, "_and_")


def pool_onto(side: int, target: int) -> tuple[int, str] | None:
    """``(window, padding)`` of a stride-``window`` pooling that maps a
    ``side`` x ``side`` grid onto ``target`` x ``target`` exactly, or None.

    'valid' with window ``side // target`` fits the floor-halving of VGG
    (15 -> 7: window 2); 'same' with window ``ceil(side / target)`` fits the
    ceil-halving of ResNet and MobileNetV2 (7 -> 4: window 2).
    """
    if target < 1 or side < target:
        return None
    window = side // target
    if side // window == target:
        return window, "valid"
    window = -(-side // target)
    if -(-side // window) == target:
        return window, "same"
    return None


KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)


def _vgg_layers(convs_in_block5: int) -> dict[str, Layer]:
    layers = {f"block{b}_pool": Layer(("floor2",) * b, min(64 * 2 ** (b - 1), 512)) for b in range(1, 5)}
    layers[f"block5_conv{convs_in_block5}"] = Layer(("floor2",) * 4, 512)
    layers["block5_pool"] = Layer(("floor2",) * 5, 512)
    return layers


def _ceil2(n: int) -> tuple[str, ...]:
    return ("ceil2",) * n


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            name="vgg16",
            application="VGG16",
            module="vgg16",
            preprocessing="caffe",
            default_size=224,
            min_size=32,
            layers=_vgg_layers(VGG16_BLOCKS[-1]),
            default_layer="block5_pool",
            finetune_boundaries=("block4_pool", "block3_pool", "block2_pool", "block1_pool"),
            gradcam_layer="block5_conv3",
            notop_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notop_md5="6d6bbae143d832006294945121d1f1fc",
            block_convs=VGG16_BLOCKS,
        ),
        Architecture(
            name="vgg19",
            application="VGG19",
            module="vgg19",
            preprocessing="caffe",
            default_size=224,
            min_size=32,
            layers=_vgg_layers(VGG19_BLOCKS[-1]),
            default_layer="block5_pool",
            finetune_boundaries=("block4_pool", "block3_pool", "block2_pool", "block1_pool"),
            gradcam_layer="block5_conv4",
            notop_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notop_md5="253f8cb515780f3b799900260a226db6",
            block_convs=VGG19_BLOCKS,
        ),
        Architecture(
            name="resnet50",
            application="ResNet50",
            module="resnet",
            preprocessing="caffe",
            default_size=224,
            min_size=32,
            layers={
                "conv2_block3_out": Layer(_ceil2(2), 256),
                "conv3_block4_out": Layer(_ceil2(3), 512),
                "conv4_block6_out": Layer(_ceil2(4), 1024),
                "conv5_block3_out": Layer(_ceil2(5), 2048),
            },
            default_layer="conv5_block3_out",
            # finetune.blocks counts ResNet stages: 1 = conv5_*, 2 = conv4_* and conv5_*, ...
            finetune_boundaries=("conv4_block6_out", "conv3_block4_out", "conv2_block3_out"),
            gradcam_layer="conv5_block3_out",
            notop_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notop_md5="4d473c1dd8becc155b73f8504c6f6626",
        ),
        Architecture(
            name="inception_v3",
            application="InceptionV3",
            module="inception_v3",
            preprocessing="tf",
            default_size=299,
            min_size=75,
            layers={
                "mixed2": Layer(_INCEPTION_STEM, 288),
                "mixed7": Layer(_INCEPTION_STEM + ("v3s2",), 768),
                "mixed8": Layer(_INCEPTION_STEM + ("v3s2",) * 2, 1280),
                "mixed9": Layer(_INCEPTION_STEM + ("v3s2",) * 2, 2048),
                "mixed10": Layer(_INCEPTION_STEM + ("v3s2",) * 2, 2048),
            },
            default_layer="mixed10",
            # finetune.blocks counts inception modules from the top: 2 trains
            # mixed9 and mixed10, the Keras fine-tuning guide's choice.
            finetune_boundaries=("mixed9", "mixed8", "mixed7"),
            gradcam_layer="mixed10",
            notop_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            notop_md5="bcbd6486424b2319ff4ef7d526e38f63",
        ),
        Architecture(
            name="mobilenet_v2",
            application="MobileNetV2",
            module="mobilenet_v2",
            preprocessing="tf",
            default_size=224,
            min_size=32,
            layers={
                "block_2_add": Layer(_ceil2(2), 24),
                "block_5_add": Layer(_ceil2(3), 32),
                "block_12_add": Layer(_ceil2(4), 96),
                "out_relu": Layer(_ceil2(5), 1280),
            },
            default_layer="out_relu",
            # finetune.blocks counts resolution stages: 1 = blocks 13-16 + Conv_1, ...
            finetune_boundaries=("block_12_add", "block_5_add", "block_2_add"),
            gradcam_layer="out_relu",
            # Keras names the file after the input size it loads (224 here,
            # the size it picks for inputs it has no weights for).
            notop_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            notop_md5=None,
        ),
    )
}
DEFAULT = "vgg16"
NARROWABLE = tuple(name for name, arch in ARCHITECTURES.items() if arch.block_convs)


def style_layers_of(layer_names) -> tuple[str, ...]:
    """The style layers of the architecture a built base with these layer names
    is (VGG16 and VGG19 share theirs)."""
    for arch in ARCHITECTURES.values():
        if set(arch.layers) <= set(layer_names):
            return arch.style_layers
    raise ValueError(f"not a base of any of {', '.join(ARCHITECTURES)}")


def get(name: str) -> Architecture:
    """The :class:`Architecture` called ``name``.

    Raises:
        KeyError: with the allowed names, when ``name`` is not supported.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; allowed: {', '.join(ARCHITECTURES)}") from None

"""The ImageNet preprocessing inside every vggtl model.

New models express it with Keras' built-in layers only (:func:`apply`), so a
``model.keras`` loads with plain ``keras.saving.load_model`` where vggtl is
not installed. The custom layers below are what artifacts written before that
used; they stay registered so those artifacts still load through vggtl.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# keras.applications.<vgg16|vgg19|resnet>.preprocess_input ("caffe" mode):
# RGB -> BGR, then subtract the ImageNet channel means (in BGR order), no scaling.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
MODES = ("caffe", "tf")


def apply(mode: str, inputs):
    """Apply ``keras.applications.<module>.preprocess_input`` for ``mode`` to the
    RGB 0-255 tensor ``inputs`` with built-in layers; returns float32.

    * ``'tf'``: ``Normalization`` dividing by 127.5 (mean 0, variance
      127.5², whose square root is exact), then ``Rescaling(1, offset=-1)``:
      the same two float operations as ``x / 127.5 - 1``.
    * ``'caffe'``: ``Normalization`` subtracting the ImageNet means in RGB order
      (variance 1: exact), then a frozen 1x1 ``Conv2D`` whose kernel is the
      channel permutation RGB -> BGR (products with 1 and 0: exact).

    Both equal ``preprocess_input`` (and the former custom layer) bit for bit,
    so features cached by earlier versions stay valid.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    x = keras.layers.Identity(dtype="float32", name="preprocess_input")(inputs)  # casts uint8 to float32
    if mode == "tf":
        x = keras.layers.Normalization(mean=np.zeros(3, "float32"), variance=np.full(3, 127.5**2, "float32"), name="preprocess_scale")(x)
        return keras.layers.Rescaling(1.0, offset=-1.0, name="preprocess_shift")(x)
    rgb_means = np.array(CAFFE_BGR_MEANS[::-1], dtype="float32")
    x = keras.layers.Normalization(mean=rgb_means, variance=np.ones(3, "float32"), name="preprocess_means")(x)
    to_bgr = keras.layers.Conv2D(3, 1, use_bias=False, trainable=False, name="preprocess_rgb_to_bgr")
    x = to_bgr(x)
    to_bgr.set_weights([np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)])
    return x


@keras.saving.register_keras_serializable(package="vggtl")
class ImagenetPreprocess(keras.layers.Layer):
    """A Keras application's ``preprocess_input`` as a layer, so a saved model
    accepts raw decoded pixels.

    Args:
        mode: ``'caffe'`` (VGG16, VGG19, ResNet50: RGB->BGR, minus the
            ImageNet channel means, no scaling) or ``'tf'`` (Inception V3,
            MobileNetV2: scaled to [-1, 1]).

    Takes RGB images with values in [0, 255] (any dtype); returns float32.
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(CAFFE_BGR_MEANS, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="vggtl")
class CaffePreprocess(ImagenetPreprocess):
    """``ImagenetPreprocess(mode='caffe')``; the name artifacts written before
    vggtl supported other backbones refer to, kept so they still load."""

    def __init__(self, **kwargs):
        kwargs.pop("mode", None)
        super().__init__(mode="caffe", **kwargs)

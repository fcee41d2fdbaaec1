"""Keras layers that must travel inside saved models (registered for loading)."""

from __future__ import annotations

import keras
from keras import ops

# keras.applications.<vgg16|vgg19|resnet>.preprocess_input ("caffe" mode):
# RGB -> BGR, then subtract the ImageNet channel means (in BGR order), no scaling.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
MODES = ("caffe", "tf")


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

"""Keras layers that must travel inside saved models (registered for loading)."""

from __future__ import annotations

import keras
from keras import ops

# keras.applications.vgg16.preprocess_input ("caffe" mode): RGB -> BGR, then
# subtract the ImageNet channel means (in BGR order), no scaling.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="vggtl")
class CaffePreprocess(keras.layers.Layer):
    """Exactly ``keras.applications.vgg16.preprocess_input`` as a layer.

    Takes RGB images with values in [0, 255] (any dtype) and returns float32
    BGR images with the ImageNet means subtracted, so a saved model accepts
    raw decoded pixels.
    """

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(CAFFE_BGR_MEANS, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape

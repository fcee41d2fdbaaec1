"""The preprocessing inside vggtl models equals each backbone's keras.applications preprocess_input exactly."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest

from vggtl.backbones import registry
from vggtl.backbones.preprocess import CaffePreprocess, ImagenetPreprocess


@pytest.mark.parametrize("name", list(registry.ARCHITECTURES))
def test_matches_the_backbones_preprocess_input(name):
    arch = registry.get(name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    module = importlib.import_module(f"keras.applications.{arch.module}")
    expected = module.preprocess_input(images.astype(np.float32))
    got = keras.ops.convert_to_numpy(ImagenetPreprocess(arch.preprocessing)(images))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_caffe_mode_flips_channels():
    # a pure-red pixel ends up in the last channel
    red = np.zeros((1, 1, 1, 3), np.uint8)
    red[..., 0] = 255
    out = keras.ops.convert_to_numpy(ImagenetPreprocess("caffe")(red))[0, 0, 0]
    assert out[2] > 100 and out[0] < 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of caffe, tf, got 'torch'"):
        ImagenetPreprocess("torch")


@pytest.mark.parametrize("layer", [ImagenetPreprocess("tf"), ImagenetPreprocess("caffe"), CaffePreprocess()])
def test_survives_save_and_load(tmp_path, layer):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.full((1, 4, 4, 3), 200, np.uint8)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert type(loaded.layers[-1]) is type(layer)


# --------------------------------------------------------------------------- built-in layers (new models)


def preprocessing_model(mode, size=8):
    from vggtl.backbones import preprocess

    inputs = keras.Input((size, size, 3), dtype="uint8")
    return keras.Model(inputs, preprocess.apply(mode, inputs))


@pytest.mark.parametrize("name", list(registry.ARCHITECTURES))
def test_builtin_layers_equal_preprocess_input_bit_for_bit(name):
    """Bit for bit, so features cached before the change stay valid."""
    arch = registry.get(name)
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    module = importlib.import_module(f"keras.applications.{arch.module}")
    got = preprocessing_model(arch.preprocessing).predict(images, verbose=0)
    np.testing.assert_array_equal(got, module.preprocess_input(images.astype(np.float32)))
    np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(ImagenetPreprocess(arch.preprocessing)(images)))


@pytest.mark.parametrize("mode", ["caffe", "tf"])
def test_builtin_layers_only(mode):
    model = preprocessing_model(mode)
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    assert not model.trainable_weights  # the RGB->BGR kernel is frozen

"""The preprocessing layer must equal keras.applications.vgg16.preprocess_input exactly."""

from __future__ import annotations

import keras
import numpy as np

from vggtl.layers import CaffePreprocess


def test_matches_keras_preprocess_input():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    expected = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    got = keras.ops.convert_to_numpy(CaffePreprocess()(images))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # channel order really flips: a pure-red pixel ends up in the last channel
    red = np.zeros((1, 1, 1, 3), np.uint8)
    red[..., 0] = 255
    out = keras.ops.convert_to_numpy(CaffePreprocess()(red))[0, 0, 0]
    assert out[2] > 100 and out[0] < 0


def test_survives_save_and_load(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, CaffePreprocess()(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.full((1, 4, 4, 3), 128, np.uint8)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

"""vggtl.backbones.build's predict_eagerly: what Keras' predict returns, without tracing."""

from __future__ import annotations

import numpy as np
import pytest

from vggtl.backbones import build


@pytest.fixture(scope="module")
def scored():
    """Named inputs, BatchNormalization and Dropout (inference mode matters), and
    the two outputs of a model that scores out-of-scope images."""
    import keras

    keras.utils.set_random_seed(0)
    maps, stats = keras.Input((4, 4, 3), name="features"), keras.Input((2,), name="stats")
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(5, 3, padding="same")(maps))
    x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D()(x))
    probabilities = keras.layers.Dense(3, activation="softmax")(x)
    score = keras.layers.Dense(1)(keras.layers.Concatenate()([x, stats]))[:, 0]
    return keras.Model({"features": maps, "stats": stats},
                       {build.PROBABILITIES: probabilities, build.UNKNOWN_SCORE: score})


def inputs(rows: int) -> dict:
    rng = np.random.default_rng(rows)
    return {"features": rng.normal(size=(rows, 4, 4, 3)).astype(np.float32), "stats": rng.normal(size=(rows, 2)).astype(np.float32)}


def test_equals_keras_predict_batch_by_batch_without_tracing(scored):
    x = inputs(7)
    got = build.predict_eagerly(scored, x, batch_size=3)  # 3 + 3 + 1 rows
    assert scored.predict_function is None  # nothing traced
    expected = scored.predict(x, verbose=0)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_takes_an_iterable_of_batches(scored):
    x = inputs(5)
    whole = build.predict_eagerly(scored, x)
    parts = build.predict_eagerly(scored, ({k: v[i : i + 2] for k, v in x.items()} for i in range(0, 5, 2)))
    for name in whole:
        np.testing.assert_array_equal(parts[name], whole[name])


def test_no_rows_give_empty_outputs_of_the_right_shape(scored):
    out = build.predict_eagerly(scored, iter([]))
    assert out[build.PROBABILITIES].shape == (0, 3) and out[build.UNKNOWN_SCORE].shape == (0,)


def test_batch_predictor_gives_what_the_predict_loops_take(scored):
    import keras

    x = inputs(4)
    probabilities, scores = build.batch_predictor(scored)(x)
    np.testing.assert_array_equal(probabilities, build.predict_eagerly(scored, x)[build.PROBABILITIES])
    assert scores.shape == (4,)
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    assert build.batch_predictor(plain)(np.ones((2, 2), np.float32)).shape == (2, 3)

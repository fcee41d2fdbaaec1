"""Head architecture per config, standardization statistics, optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from vggtl.training import heads
from vggtl.config import HeadConfig


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_seed_recipe_shape():
    head = heads.build_head((7, 7, 512), 5, HeadConfig(pooling="flatten", units=[256], dropout=0.5, standardize=False))
    assert layer_types(head) == ["InputLayer", "Flatten", "Dense", "Dropout", "Dense"]
    assert head.output_shape == (None, 5)
    assert head.count_params() == 7 * 7 * 512 * 256 + 256 + 256 * 5 + 5


def test_avg_standardized_linear():
    x = np.random.default_rng(0).random((10, 7, 7, 512)).astype(np.float32)
    stats = heads.standardization_stats(x, "avg")
    head = heads.build_head((7, 7, 512), 3, HeadConfig(pooling="avg", units=[], dropout=0.2), stats=stats)
    assert layer_types(head) == ["InputLayer", "GlobalAveragePooling2D", "Normalization", "Dropout", "Dense"]
    probs = head.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_standardize_requires_stats():
    with pytest.raises(ValueError, match="needs stats"):
        heads.build_head((1, 1, 8), 2, HeadConfig(standardize=True))


def test_l2_is_applied():
    head = heads.build_head((1, 1, 8), 2, HeadConfig(units=[4], l2=0.01, standardize=False))
    assert len(head.losses) == 2


def test_pool_numpy_matches_pooling():
    x = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    assert heads.pool_numpy(x, "flatten").shape == (2, 12)
    np.testing.assert_array_equal(heads.pool_numpy(x, "avg"), x.mean(axis=(1, 2)))
    np.testing.assert_array_equal(heads.pool_numpy(x, "max"), x.max(axis=(1, 2)))


def test_constant_features_do_not_explode():
    """Always-zero positions (ReLU) must not be divided by ~0."""
    x = np.zeros((20, 2, 2, 4), np.float32)
    x[:, 0, 0, :] = np.random.default_rng(1).random((20, 4))
    mean, var = heads.standardization_stats(x, "flatten")
    assert var.min() > 0.01 * var.max()


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd"])
def test_optimizers(name):
    opt = heads.make_optimizer(name, 0.01)
    assert float(opt.learning_rate) == pytest.approx(0.01)


def test_sgd_has_momentum():
    assert heads.make_optimizer("sgd", 0.1).momentum == 0.9


def test_avgmax_pooling_concatenates_and_saves_as_plain_keras(tmp_path):
    """avgmax: [global average, global max] (2 x channels), the same in NumPy,
    in the head, through with_probe and after a save/load without vggtl's code."""
    import keras

    x = np.random.default_rng(2).random((6, 3, 3, 4)).astype(np.float32)
    pooled = heads.pool_numpy(x, "avgmax")
    np.testing.assert_array_equal(pooled, np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1))
    head = heads.build_head((3, 3, 4), 2, HeadConfig(pooling="avgmax", units=[], dropout=0.0), stats=heads.pooled_stats(pooled))
    np.testing.assert_allclose(heads.vector_model(head).predict(pooled, verbose=0), head.predict(x, verbose=0), rtol=1e-5)
    probe = heads.fit_probe(pooled, np.array([0, 1] * 3), heads.probe_stats(pooled), 2, seed=0)
    model = heads.with_probe(head, "avgmax", heads.probe_stats(pooled), probe)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_inside_the_model_matches_scikit_learn(n_classes):
    """Also for two classes, where scikit-learn keeps a single logit (a probe of
    width 1 would make softmax output 1.0 and break the average)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    y = np.arange(40) % n_classes
    x = rng.random((40, 2, 2, 6)).astype(np.float32) + y[:, None, None, None] * 0.3
    pooled = heads.pool_numpy(x, "avg")
    stats = heads.probe_stats(pooled)
    kernel, bias = heads.fit_probe(pooled, y, stats, n_classes, seed=0)
    assert kernel.shape == (6, n_classes) and bias.shape == (n_classes,)
    head = heads.build_head((2, 2, 6), n_classes, HeadConfig(units=[], dropout=0.0), stats=heads.pooled_stats(pooled))
    model = heads.with_probe(head, "avg", stats, (kernel, bias))
    expected = LogisticRegression(max_iter=heads.PROBE_MAX_ITER, random_state=0).fit((pooled - stats[0]) / np.sqrt(stats[1]), y)
    probe_probs = 2 * model.predict(x, verbose=0) - head.predict(x, verbose=0)  # Average = (head + probe) / 2
    np.testing.assert_allclose(probe_probs, expected.predict_proba((pooled - stats[0]) / np.sqrt(stats[1])), atol=1e-4)
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 3, 8])
def test_large_training_sets_fit_the_probe_incrementally(monkeypatch, n_classes):
    """Above PROBE_EXACT_MAX_ROWS: mini-batches with partial_fit, never L-BFGS,
    and a multinomial probe as good as the exact one on the same data (also
    for classes along one axis, where one-vs-rest would fail)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    y = np.arange(12_000) % n_classes
    pooled = rng.normal(size=(12_000, 8)).astype(np.float32) + y[:, None] * 0.8
    stats = heads.probe_stats(pooled)
    exact = heads.fit_probe(pooled, y, stats, n_classes, seed=0)
    monkeypatch.setattr(heads, "PROBE_EXACT_MAX_ROWS", 1000)
    monkeypatch.setattr(heads, "PROBE_SGD_BATCH", 256)
    monkeypatch.setattr(LogisticRegression, "fit", lambda *a, **k: pytest.fail("L-BFGS used above the threshold"))
    kernel, bias = heads.fit_probe(pooled, y, stats, n_classes, seed=0)
    assert kernel.shape == (8, n_classes) and bias.shape == (n_classes,) and kernel.dtype == np.float32
    z = (pooled - stats[0]) / np.sqrt(stats[1])
    acc = np.mean((z @ kernel + bias).argmax(axis=1) == y)
    exact_acc = np.mean((z @ exact[0] + exact[1]).argmax(axis=1) == y)
    assert acc >= exact_acc - 0.01, (acc, exact_acc)


@pytest.mark.parametrize("n_classes", [2, 3, 8])
def test_the_incremental_probe_is_seeded(monkeypatch, n_classes):
    """The same vectors and seed give the same probe, bit for bit, and another
    seed another one (checked on a smaller set than the test above: what is
    checked is the seeding, not the fit)."""
    monkeypatch.setattr(heads, "PROBE_EXACT_MAX_ROWS", 100)
    monkeypatch.setattr(heads, "PROBE_SGD_BATCH", 200)
    rng = np.random.default_rng(5)
    y = np.arange(600) % n_classes
    pooled = rng.normal(size=(600, 8)).astype(np.float32) + y[:, None] * 0.8
    stats = heads.probe_stats(pooled)
    first, again, other = (heads.fit_probe(pooled, y, stats, n_classes, seed=seed) for seed in (0, 0, 1))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_probe_names_a_missing_class():
    pooled = np.random.default_rng(0).random((6, 4))
    with pytest.raises(ValueError, match=r"every class needs training images; the probe saw classes \[0, 2\]"):
        heads.fit_probe(pooled, np.array([0, 2] * 3), heads.probe_stats(pooled), 3, seed=0)


def test_sqrt_numpy_is_a_close_square_root():
    v = np.concatenate([[0.0], np.geomspace(1e-4, 1e4, 999)]).astype(np.float32)
    approx = heads.sqrt_numpy(v)
    assert approx[0] == 0.0
    ratio = approx[1:] / np.sqrt(v[1:])
    assert ratio.min() > 0.98 and ratio.max() < 1.0 + 1e-5  # chords of a concave function lie below it
    knots = heads.SQRT_KNOTS[1:10].astype(np.float32)
    np.testing.assert_allclose(heads.sqrt_numpy(knots), np.sqrt(knots), rtol=1e-5)  # exact at the knots


@pytest.mark.parametrize("pooling", ["avg_sqrt", "max_sqrt", "avgmax_sqrt"])
def test_sqrt_pooling_in_numpy_head_probe_and_a_plain_keras_reload(tmp_path, pooling):
    import keras

    x = (np.random.default_rng(4).random((6, 3, 3, 4)) * 20).astype(np.float32)
    pooled = heads.pool_numpy(x, pooling)
    plain = heads.pool_numpy(x, pooling.removesuffix("_sqrt"))
    np.testing.assert_allclose(pooled, np.sqrt(plain), rtol=0.02)
    head = heads.build_head((3, 3, 4), 2, HeadConfig(pooling=pooling, units=[4], dropout=0.0), stats=heads.pooled_stats(pooled))
    assert not head.get_layer(f"pool_{pooling}").trainable_weights  # the square root is fixed, not learned
    inputs = keras.Input((3, 3, 4))
    pool_model = keras.Model(inputs, head.get_layer(f"pool_{pooling}")(inputs))
    np.testing.assert_allclose(pool_model.predict(x, verbose=0), pooled, rtol=1e-4)
    np.testing.assert_allclose(heads.vector_model(head).predict(pooled, verbose=0), head.predict(x, verbose=0), rtol=1e-4)
    probe = heads.fit_probe(pooled, np.array([0, 1] * 3), heads.probe_stats(pooled), 2, seed=0)
    model = heads.with_probe(head, pooling, heads.probe_stats(pooled), probe)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)

"""Temperature scaling: fitted on val, built into the softmax layers' weights."""

from __future__ import annotations

import json

import numpy as np

from conftest import make_dataset, run_pipeline, write_config
from vggtl.training import temperature
from vggtl.training.metrics import cross_entropy


def overconfident_model(n_features=6, n_classes=3, scale=8.0):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((n_features,))
    dense = keras.layers.Dense(n_classes, activation="softmax", name="predictions")
    model = keras.Model(inputs, dense(inputs))
    kernel = np.random.default_rng(0).normal(size=(n_features, n_classes)).astype(np.float32) * scale
    dense.set_weights([kernel, np.zeros(n_classes, np.float32)])
    return model, kernel


def test_an_overconfident_softmax_is_softened_and_its_classes_kept():
    model, kernel = overconfident_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(1)
    noisy = rng.random(200) < 0.3  # 30% wrong labels: the sharp softmax is overconfident
    y[noisy] = (y[noisy] + rng.integers(1, 3, size=int(noisy.sum()))) % 3
    before = model.predict(x, verbose=0)
    fitted = temperature.fit_temperature(model, lambda m: m.predict(x, verbose=0), y)
    after = model.predict(x, verbose=0)
    assert fitted["temperature"] > 1.5 and fitted["val_loss_after"] < fitted["val_loss_before"]
    assert abs(cross_entropy(y, after) - fitted["val_loss_after"]) < 1e-5
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))
    np.testing.assert_allclose(model.get_layer("predictions").get_weights()[0], kernel / fitted["temperature"], rtol=2e-3)


def test_a_calibrated_softmax_is_left_alone():
    model, kernel = overconfident_model(scale=1.0)
    x = np.random.default_rng(2).normal(size=(300, 6)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    y = np.array([np.random.default_rng(i).choice(3, p=p / p.sum()) for i, p in enumerate(probs.astype(np.float64))])
    fitted = temperature.fit_temperature(model, lambda m: m.predict(x, verbose=0), y)
    assert 0.7 < fitted["temperature"] < 1.4 and fitted["val_loss_after"] <= fitted["val_loss_before"]


def test_softmax_denses_finds_the_nested_head_and_the_probe():
    import keras

    from vggtl.config import HeadConfig
    from vggtl.training import heads

    head = heads.build_head((2, 2, 4), 3, HeadConfig(units=[4], standardize=False))
    probe = (np.zeros((4, 3), np.float32), np.zeros(3, np.float32))
    stats = (np.zeros(4), np.ones(4))
    model = heads.with_probe(head, "avg", stats, probe)
    assert sorted(d.name for d in temperature.softmax_denses(model)) == ["predictions", "probe"]
    assert all(isinstance(d, keras.layers.Dense) for d in temperature.softmax_denses(model))


def test_train_builds_the_temperature_into_the_artifact(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data"), tmp_path, train={"temperature": True})
    run_pipeline(tmp_path, cfg, [[str(cfg)]])
    out = tmp_path / "experiments" / "tiny" / "v1"
    metrics = json.loads((out / "metrics.json").read_text())
    t = metrics["temperature"]
    assert t["temperature"] > 0 and t["val_loss_after"] <= t["val_loss_before"] and set(t["ece_before"]) == {"val", "test"}
    assert "Temperature scaling (`train.temperature`), fitted on val and built into `model.keras`: T = " in (out / "report.md").read_text()

"""vggtl.unknown.detector: the out-of-scope score, its threshold, and the same score in Keras."""

import numpy as np
import pytest

from vggtl.unknown import detector


def _inputs(rng, n, shift=0.0, width=24, stats=20):
    pooled = np.abs(rng.normal(1.0 + shift, 0.3, (n, width)))
    pooled[:, : width // 2] += 1.0  # in-scope images share a direction
    return pooled, rng.normal(shift, 1.0, (n, stats))


def _fitted(keep=0.9, seed=0):
    rng = np.random.default_rng(seed)
    return detector.fit(_inputs(rng, 60), _inputs(rng, 40), keep, split_at=8, seed=0), rng


def test_far_images_score_higher_and_the_threshold_keeps_what_was_asked():
    fitted, rng = _fitted(keep=0.9)
    inside, outside = _inputs(rng, 200), _inputs(rng, 200, shift=3.0)
    s_in, s_out = fitted.scores(*inside), fitted.scores(*outside)
    assert np.mean(s_out > fitted.threshold) > 0.95
    assert 0.8 < np.mean(s_in <= fitted.threshold) <= 1.0
    assert fitted.record["val_kept"] >= 0.9  # "higher" quantile: at least keep of val


def test_keep_one_keeps_every_validation_image():
    rng = np.random.default_rng(1)
    val = _inputs(rng, 30)
    fitted = detector.fit(_inputs(rng, 40), val, 1.0, 8, 0)
    assert np.all(fitted.scores(*val) <= fitted.threshold)


@pytest.mark.parametrize("n, d", [(12, 40), (60, 20)])  # fewer images than statistics, and more
def test_the_style_distance_is_the_ledoit_wolf_mahalanobis_distance(n, d):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (n, d)) * rng.uniform(0.5, 3, d) + rng.normal(0, 2, d)
    probe = rng.normal(0, 2, (5, d))
    center, kernel = detector._mahalanobis_kernel(x)
    scale = x.std(axis=0)
    want = LedoitWolf().fit(x / scale).mahalanobis(probe / scale)
    np.testing.assert_allclose(np.square((probe - center) @ kernel).sum(axis=1), want, rtol=1e-6)


def test_too_few_images_are_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="at least 3 training and 2 validation"):
        detector.fit(_inputs(rng, 10), _inputs(rng, 1), 0.95, 8, 0)


def test_references_are_capped_with_a_recorded_sample(monkeypatch):
    monkeypatch.setattr(detector, "MAX_REFERENCES", 16)
    rng = np.random.default_rng(3)
    fitted = detector.fit(_inputs(rng, 50), _inputs(rng, 10), 0.95, 8, 0)
    assert fitted.references.shape[0] == 16 and fitted.record["references_sampled_from"] == 50


def test_save_and_load_give_the_same_scores(tmp_path):
    fitted, rng = _fitted()
    detector.save(fitted, tmp_path, {"note": "x"})
    again = detector.load(tmp_path)
    probe = _inputs(rng, 5, shift=1.0)
    np.testing.assert_allclose(again.scores(*probe), fitted.scores(*probe), rtol=1e-6)
    assert again.threshold == fitted.threshold and again.record["note"] == "x"
    assert detector.load(tmp_path / "nothing") is None


def test_keras_score_equals_the_numpy_score():
    import keras

    fitted, rng = _fitted()
    pooled, stats = _inputs(rng, 7, shift=0.5)
    maps = np.repeat(pooled[:, None, None, :], 2, axis=1).repeat(2, axis=2).astype("float32")  # avg-pools to `pooled`
    m_in, s_in = keras.Input(maps.shape[1:]), keras.Input((1, 1, stats.shape[1]))
    model = keras.Model([m_in, s_in], detector.keras_score(fitted, m_in, s_in))
    got = model.predict([maps, stats[:, None, None, :].astype("float32")], verbose=0)
    np.testing.assert_allclose(got, fitted.scores(pooled, stats), rtol=1e-3, atol=1e-3)


def test_summary_counts_what_the_threshold_calls_unknown():
    s = detector.summary(np.array([0.0, 1.0, 2.0, 3.0]), 1.5)
    assert s["n"] == 4 and s["unknown"] == 2 and s["kept"] == 0.5 and len(s["quantiles"]) == 7
    assert detector.summary(np.array([]), 0.0) == {"n": 0}

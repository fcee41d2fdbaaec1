"""The learning curve and its extrapolation."""

from __future__ import annotations

import numpy as np

from vggtl.audits import curve


def test_a_power_law_is_recovered_and_extrapolated():
    n = np.array([4, 10, 20, 30, 40.0])
    acc = 0.9 - 0.8 * n ** -0.5
    fit = curve.extrapolate(n, acc, 80)
    assert fit["ok"] and abs(fit["ceiling"] - 0.9) < 0.01
    assert abs(fit["at_target"] - (0.9 - 0.8 * 80 ** -0.5)) < 0.002
    assert abs(fit["gain_points"] - 100 * (0.8 * 40 ** -0.5 - 0.8 * 80 ** -0.5)) < 0.3


def test_a_falling_curve_says_it_cannot_tell():
    fit = curve.extrapolate([4, 10, 20], [0.8, 0.7, 0.6], 40)
    assert not fit["ok"] and "does not rise" in fit["why"]
    assert curve.verdict_line(fit).startswith("more data: cannot tell")


def test_points_rise_with_more_images_on_learnable_data():
    rng = np.random.default_rng(0)
    centers = rng.random((3, 24)) * 2
    x = np.abs(np.concatenate([c + rng.normal(0, 1.0, (30, 24)) for c in centers]))
    y = np.repeat(np.arange(3), 30)
    points = curve.points(x, y, 3, folds=5, seed=0)
    assert points["fractions"] == list(curve.FRACTIONS) and len(points["accuracy"]) == 5
    assert points["accuracy"][-1] > points["accuracy"][0]
    assert points["images_per_class"][-1] == 24.0  # 4/5 of 30
    assert set(points["class_recall"]) == {0, 1, 2}

"""Would more images help? A learning curve on the cached features, extrapolated.

Out-of-fold accuracy of the audit's ensemble (:mod:`labels`) trained on
10/25/50/75/100% of each class's images of the training folds (the same
stratified folds for every fraction, repeated with other fold and subsample
seeds), overall and per class (recall). The accuracy as a function of images
per class ``n`` is fitted with the usual power law ``acc(n) = a - b n^-c``
(scipy's bounded least squares) and evaluated at twice the images per class
the data has now: "about +X points with N more images per class". Where the
fit is not credible (too few points, or the curve falls), it says so.
"""

from __future__ import annotations

import numpy as np

from vggtl.audits import labels as label_model

FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
REPEATS = 3
PER_CLASS_MIN = 20  # images a class needs for its own extrapolation


def points(vectors: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int) -> dict:
    """Accuracy and per-class recall at each fraction, averaged over folds and repeats."""
    from sklearn.model_selection import StratifiedKFold

    vectors = label_model.signed_sqrt(vectors)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    correct = np.zeros((len(FRACTIONS), len(labels)))
    for repeat in range(REPEATS):
        rng = np.random.default_rng(seed + 1000 + repeat)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + 1000 + repeat)
        for fit_rows, held in splitter.split(vectors, labels):
            for f, fraction in enumerate(FRACTIONS):
                subset = _subsample(fit_rows, labels, fraction, rng)
                probs = label_model.ensemble_probabilities(vectors, unit, labels, subset, held, n_classes, seed)
                correct[f, held] += probs.argmax(axis=1) == labels[held]
    correct /= REPEATS
    counts = np.bincount(labels, minlength=n_classes)
    train_share = (folds - 1) / folds
    return {
        "fractions": list(FRACTIONS),
        "images_per_class": [round(float(fraction * train_share * counts.mean()), 2) for fraction in FRACTIONS],
        "accuracy": [round(float(row.mean()), 4) for row in correct],
        "class_recall": {int(c): [round(float(row[labels == c].mean()), 4) for row in correct] for c in range(n_classes)},
        "class_images": {int(c): [round(float(fraction * train_share * counts[c]), 2) for fraction in FRACTIONS]
                         for c in range(n_classes)},
        "repeats": REPEATS,
    }


def _subsample(rows: np.ndarray, labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    """``fraction`` of each class's ``rows`` (at least 2 of each, or all it has)."""
    chosen = []
    for cls in np.unique(labels[rows]):
        members = rows[labels[rows] == cls]
        take = min(len(members), max(2, int(round(fraction * len(members)))))
        chosen.append(np.sort(rng.choice(members, take, replace=False)))
    return np.concatenate(chosen)


def extrapolate(n: list[float], accuracy: list[float], target_n: float) -> dict:
    """The power-law fit of ``accuracy`` over ``n`` images per class and its value
    at ``target_n``; ``{"ok": False, "why": ...}`` where a fit says nothing."""
    from scipy.optimize import curve_fit

    n, acc = np.asarray(n, float), np.asarray(accuracy, float)
    if len(n) < 3 or n[-1] <= n[0]:
        return {"ok": False, "why": "too few points"}
    if acc[-1] < acc[0]:
        return {"ok": False, "why": "accuracy does not rise with more images (noisy or too few images)"}

    def law(x, a, b, c):
        return a - b * np.power(x, -c)

    try:
        (a, b, c), _ = curve_fit(law, n, acc, p0=(min(1.0, acc[-1] + 0.05), 0.5, 0.5),
                                 bounds=([0.0, 0.0, 0.05], [1.0, 10.0, 3.0]), maxfev=20000)
    except (RuntimeError, ValueError) as error:
        return {"ok": False, "why": f"the power law did not fit ({error})"}
    now = float(law(n[-1], a, b, c))
    later = float(law(target_n, a, b, c))
    return {"ok": True, "a": round(float(a), 4), "b": round(float(b), 4), "c": round(float(c), 4),
            "at_now": round(now, 4), "at_target": round(later, 4), "target_images_per_class": round(float(target_n), 1),
            "gain_points": round(100 * (later - now), 1), "ceiling": round(float(a), 4)}


def verdict(curve: dict, total_per_class: float) -> dict:
    """The overall extrapolation: the CV curve's fit, evaluated at twice the
    images per class the data has (the training folds hold ``(folds-1)/folds`` of them)."""
    n = curve["images_per_class"]
    fit = extrapolate(n, curve["accuracy"], 2 * n[-1])
    fit["more_images_per_class"] = round(float(total_per_class), 1)
    return fit


def verdict_line(fit: dict) -> str:
    if not fit["ok"]:
        return f"more data: cannot tell ({fit['why']})"
    gain = fit["gain_points"]
    size = "little" if gain < 1 else "some" if gain < 4 else "a lot"
    return (f"more data: about {gain:+.1f} points of accuracy with ~{fit['more_images_per_class']:g} more images per "
            f"class (twice the data; fitted ceiling {100 * fit['ceiling']:.0f}%): {size} to gain")

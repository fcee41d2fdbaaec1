"""Cross-validation on cached features (train.folds / --folds): train + val folds, test untouched."""

from __future__ import annotations

import json

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import train


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    root = make_dataset(tmp / "data")
    cfg = write_config(tmp / "c.yaml", root, tmp)
    run_pipeline(tmp, cfg, [[str(cfg), "--folds", "3"]])
    return tmp / "experiments" / "tiny" / "v1"


def test_folds_are_reported_for_head_and_probe(cv_run):
    metrics = json.loads((cv_run / "metrics.json").read_text())
    cv = metrics["cv"]
    assert cv["folds"] == 3 and cv["images"] == metrics["split"]["sizes"]["train"] + metrics["split"]["sizes"]["val"]
    for name in ("head", "probe"):
        assert len(cv[name]["per_fold"]) == 3 and 0.0 <= cv[name]["mean"] <= 1.0
    assert cv["head"]["mean"] >= 0.8  # the tiny colors are easy; a broken fold loop scores ~1/3
    report = (cv_run / "report.md").read_text()
    assert "## Cross-validation (3 stratified folds of train + val" in report


def test_too_many_folds_for_a_class_is_refused_before_training(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "data")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    run_pipeline(tmp_path, cfg, [])
    monkeypatch.chdir(tmp_path)
    assert train.main([str(cfg), "--folds", "12"]) == 2
    out, err = capsys.readouterr()
    assert "key 'train.folds': 12 folds need at least 12 images of every class in train + val; too few: blue (" in err
    assert "phase 1" not in out
    assert train.main([str(cfg), "--folds", "1"]) == 2
    assert "key 'train.folds': got 1; use 0 (off) or at least 2 folds" in capsys.readouterr().err


@pytest.fixture(scope="module")
def views_store(tmp_path_factory):
    """A store with 2 augmented views of each training image (extracted, not trained)."""
    tmp = tmp_path_factory.mktemp("cv-views")
    cfg = write_config(tmp / "c.yaml", make_dataset(tmp / "data"), tmp, augment={"views": 2})
    run_pipeline(tmp, cfg, [])
    return tmp, cfg


def test_cross_validation_trains_on_the_stored_views(views_store, monkeypatch):
    """Each fold's head is trained by phase 1's own function on clean + view
    vectors: the training split's rows draw their stored views, the val
    split's rows (no views stored) repeat their clean vectors."""
    import numpy as np

    from vggtl import config
    from vggtl import plan
    from vggtl.training import cv, fit
    from vggtl.training import run as training_run

    tmp, cfg_path = views_store
    monkeypatch.chdir(tmp)
    cfg = config.load(cfg_path)
    banks, real = [], fit.fit_head_on_pooled
    monkeypatch.setattr(fit, "fit_head_on_pooled", lambda c, pooled, *a: (banks.append(pooled), real(c, pooled, *a))[1])
    fs, _ = training_run.open_current_store(plan.resolve(cfg))
    with fs:
        data = cv.fold_data(cfg, fs, 3)
        scores = cv.head_scores(cfg, data, fs)
        bank = data.pooled_bank(fs, cfg.head.pooling)
        in_train = np.isin(data.rows, fs.split_rows("train"))
        assert np.array_equal(fs.rows_with_views(data.rows, 2), in_train)
    assert bank.shape[0] == 3 and len(banks) == 3 and all(b.shape[0] == 3 for b in banks)
    for view in (1, 2):
        assert not np.allclose(bank[view][in_train], bank[0][in_train])
        np.testing.assert_array_equal(bank[view][~in_train], bank[0][~in_train])
    assert len(scores["accuracy"]) == 3
    banks.clear()
    no_views = config.with_overrides(cfg, {"augment.views": 0}, "test")
    with training_run.open_current_store(plan.resolve(no_views))[0] as fs:
        cv.head_scores(no_views, cv.fold_data(no_views, fs, 3), fs)
    assert all(b.shape[0] == 1 for b in banks)

"""vggtl tune: a seeded Optuna search of head/train settings by cross-validation
on cached features (train + val only), published with a trials table and a
best.yaml that vggtl train accepts."""

from __future__ import annotations

import csv
import sys

import pytest
import yaml

from conftest import make_dataset, needs_extra, run_pipeline, write_config
from vggtl import config, train
from vggtl import tune as tune_command
from vggtl import plan
from vggtl.training import cv
from vggtl.training import run as training_run

SPACE = {"head.dropout": {"low": 0.0, "high": 0.6}, "head.pooling": ["avg", "max", "avgmax"], "head.units": [[], [8]]}


def tune_config(tmp, **sections):
    root = tmp / "data"
    if not root.exists():
        make_dataset(root)
    return write_config(tmp / "c.yaml", root, tmp, tune={"folds": 3, "jobs": 2, "space": SPACE}, **sections)


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    cfg = tune_config(tmp)
    run_pipeline(tmp, cfg, [])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        for _ in range(2):
            assert tune_command.main([str(cfg), "--trials", "4"]) == 0
    return tmp, cfg


@needs_extra("tune")
def test_outputs_are_published_with_a_trials_table(tuned, capsys):
    tmp, _ = tuned
    out = tmp / "experiments" / "tiny" / "tune" / "v1"
    for name in ("trials.csv", "trials.md", "trials.png", "best.yaml", "tune.json", "checksums.sha256"):
        assert (out / name).is_file(), name
    rows = rows_of(out / "trials.csv")
    assert [r["trial"] for r in rows] == ["default", "0", "1", "2", "3"]
    assert all(r["state"] == "complete" and 0.0 <= float(r["cv_accuracy"]) <= 1.0 for r in rows)
    assert sum(r["best"] == "yes" for r in rows) == 1
    assert {r["head.pooling"] for r in rows[1:]} <= {"avg", "max", "avgmax"}
    assert all(0.0 <= float(r["head.dropout"]) <= 0.6 for r in rows[1:])
    assert "| trial | state | cv_accuracy |" in (out / "trials.md").read_text()


@needs_extra("tune")
def test_same_seed_gives_the_same_trials_table(tuned):
    tmp, _ = tuned
    first, second = (rows_of(tmp / "experiments" / "tiny" / "tune" / v / "trials.csv") for v in ("v1", "v2"))
    for row in first + second:
        del row["seconds"]
    assert first == second


@needs_extra("tune")
def test_best_yaml_is_accepted_by_train_as_is(tuned, monkeypatch):
    tmp, _ = tuned
    best = tmp / "experiments" / "tiny" / "tune" / "v1" / "best.yaml"
    rows = rows_of(best.parent / "trials.csv")
    winner = next(r for r in rows if r["best"] == "yes")
    cfg = config.load(best)
    if winner["trial"] != "default":
        assert cfg.head.pooling == winner["head.pooling"]
    monkeypatch.chdir(tmp)
    assert train.main([str(best)]) == 0


@needs_extra("tune")
def test_search_folds_hold_only_train_and_val(tuned, monkeypatch):
    tmp, cfg_path = tuned
    monkeypatch.chdir(tmp)
    cfg = config.load(cfg_path)
    fs, _ = training_run.open_current_store(plan.resolve(cfg))
    with fs:
        data = cv.fold_data(cfg, fs, 3)
        searched = len(fs.split_rows("train")) + len(fs.split_rows("val"))
        assert len(data.rows) == len(data.labels) == searched
        assert set(data.rows) == set(fs.split_rows("train")) | set(fs.split_rows("val"))
        assert len(fs.split_rows("test")) > 0
        for fit_idx, inner_train, inner_val, held in data.folds:
            assert set(inner_train) | set(inner_val) == set(fit_idx) and not set(fit_idx) & set(held)


@needs_extra("tune")
def test_a_diverging_trial_is_recorded_as_failed_not_a_crash(tmp_path, monkeypatch, capsys):
    space = {"train.optimizer": ["sgd"], "train.learning_rate": [10.0], "head.l2": [0.0]}
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data"), tmp_path,
                       tune={"folds": 2, "jobs": 1, "space": space})
    run_pipeline(tmp_path, cfg, [])
    monkeypatch.chdir(tmp_path)
    assert tune_command.main([str(cfg), "--trials", "1"]) == 0
    rows = rows_of(tmp_path / "experiments" / "tiny" / "tune" / "v1" / "trials.csv")
    failed = rows[1]
    assert failed["state"] == "failed" and "phase 1 diverged" in failed["error"] and "lower train.learning_rate" in failed["error"]
    assert rows[0]["best"] == "yes"
    assert "1 trials (1 failed)" in capsys.readouterr().out


def test_missing_optuna_names_the_extra(tmp_path, monkeypatch, capsys):
    cfg = tune_config(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    monkeypatch.chdir(tmp_path)
    assert tune_command.main([str(cfg), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "vggtl tune needs the optional package 'optuna': pip install 'vggtl[tune]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "experiments" / "tiny" / "tune").exists()


@pytest.mark.parametrize(
    "space, message",
    [
        ({"head.dropuot": [0.1]}, "not a tunable key 'head.dropuot'. Did you mean 'head.dropout'?"),
        ({"head.dropout": {"low": 0.5, "high": 0.5}}, "empty range: low 0.5 must be below high 0.5"),
        ({"head.dropout": []}, "got []; list at least one choice"),
        ({"head.l2": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"train.folds": [3]}, "not a tunable key 'train.folds'"),
    ],
)
def test_a_bad_space_is_refused_before_any_work(tmp_path, monkeypatch, capsys, space, message):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data"), tmp_path, tune={"space": space})
    monkeypatch.chdir(tmp_path)
    assert tune_command.main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "key 'tune.space." in err and message in err and "Traceback" not in err
    assert yaml.safe_load(cfg.read_text())["tune"]["space"] == space

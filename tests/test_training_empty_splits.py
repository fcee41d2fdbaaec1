"""data.split.val: 0 / data.split.test: 0 -- the advice vggtl's own error gives
for a tiny class -- train and publish, saying what was not measured."""

from __future__ import annotations

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import train
from vggtl.training import artifact
from vggtl.training import run as training_run


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Four images per class: no room for both held-out splits' usual fractions."""
    tmp = tmp_path_factory.mktemp("empty-splits")
    cfg = write_config(tmp / "c.yaml", make_dataset(tmp / "data", per_class=4), tmp, train={"epochs": 6})
    return run_pipeline(tmp, cfg, [])


def train_with(tmp, capsys, monkeypatch, *sets) -> tuple[int, str]:
    monkeypatch.chdir(tmp)
    code = train.main([str(tmp / "c.yaml"), *(a for s in sets for a in ("--set", s))])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_no_validation_split_trains_every_epoch_and_says_so(small, capsys, monkeypatch):
    code, printed = train_with(small, capsys, monkeypatch, "data.split.val=0", f"output.dir={small / 'noval'}")
    assert code == 0, printed
    assert "no validation split (data.split.val: 0): phase 1 runs all 6 epochs, without early stopping" in printed
    assert "HIT THE EPOCH CAP" not in printed and "Traceback" not in printed
    art = artifact.load(small / "noval" / "tiny" / "latest")
    m = art.metrics
    assert (m["val"]["n"], m["val"]["accuracy"], m["val"]["accuracy_ci95"]) == (0, None, None)
    assert m["phase1"]["epochs_trained"] == 6 and m["phase1"]["best_epoch"] == 6 and m["phase1"]["hit_epoch_cap"] is False
    assert m["phase1"]["val"]["accuracy"] is None and m["baseline"]["linear_probe"]["val_accuracy"] is None
    assert "temperature" not in m and m["test"]["n"] == 3


def test_no_test_split_publishes_a_checked_artifact_and_says_nothing_was_held_out(small, capsys, monkeypatch):
    code, printed = train_with(small, capsys, monkeypatch, "data.split.test=0", f"output.dir={small / 'notest'}")
    assert code == 0, printed
    assert "no test split (data.split.test: 0): nothing measured on held-out images" in printed
    art = artifact.load(small / "notest" / "tiny" / "latest")
    assert (art.metrics["test"]["n"], art.metrics["test"]["accuracy"]) == (0, None)
    # the end-to-end check ran on the validation images instead
    assert 0 < art.info["end_to_end_check_max_abs_diff"] < training_run.E2E_TOLERANCE
    report = (art.path / "report.md").read_text()
    assert "No test split (`data.split.test: 0`): nothing here is measured" in report
    assert "![confusion matrix]" not in report and "Calibration" in report


def test_fine_tuning_without_a_validation_split_is_refused_before_training(tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=4), tmp_path,
                       data={"split": {"val": 0, "test": 0.25}}, finetune={"blocks": 1, "epochs": 1})
    run_pipeline(tmp_path, cfg, [])
    code, printed = train_with(tmp_path, capsys, monkeypatch)
    assert code == 2
    assert "finetune.blocks: needs a validation split to decide on" in printed and "Traceback" not in printed
    assert not (tmp_path / "experiments" / "tiny").exists() or not any((tmp_path / "experiments" / "tiny").glob("v*"))

"""finetune.devices: phase 2 under tf.distribute.MirroredStrategy, tested on a
CPU split into logical devices (a fresh process: devices are fixed once
TensorFlow initialises)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import config, train
from vggtl.errors import ConfigError
from vggtl.training import artifact

FINETUNE = {"blocks": 1, "epochs": 3, "optimizer": "adam", "learning_rate": 1e-4}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A tiny tree extracted for fine-tuning (block5_pool + block4_pool stored), trained once on one device."""
    tmp = tmp_path_factory.mktemp("devices")
    cfg = write_config(tmp / "ft.yaml", make_dataset(tmp / "data", per_class=16), tmp, finetune=FINETUNE)
    return run_pipeline(tmp, cfg, [[str(cfg), "--set", f"output.dir={tmp / 'one'}"]])


def train_in_fresh_process(tmp, *argv):
    """``vggtl train`` twice in one new interpreter (``argv`` each time); its output."""
    code = ("import sys; from vggtl import train\n"
            "for _ in range(2):\n"
            "    assert train.main(sys.argv[1:]) == 0\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, cwd=tmp,
                          env={**os.environ, "VGGTL_CACHE_DIR": str(tmp / "vggtl-cache")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_two_logical_cpu_devices_train_reproducibly_and_ship_what_was_evaluated(extracted):
    out = extracted / "two"
    printed = train_in_fresh_process(extracted, extracted / "ft.yaml", "--set", "finetune.devices=2", "--set", f"output.dir={out}")
    two = artifact.load(out / "tiny" / "v1")
    one = artifact.load(extracted / "one" / "tiny" / "latest")
    assert two.metrics["phase2"]["devices"] == "2 logical CPU devices"
    assert "phase 2 (fine-tune 1 block(s) from block4_pool, on 2 logical CPU devices)" in printed
    assert one.metrics["phase2"]["devices"] == "1 device"
    # the same run twice: identical numbers
    assert (out / "tiny" / "v1" / "metrics.json").read_text() == (out / "tiny" / "v2" / "metrics.json").read_text()
    # train's own end-to-end check passed: model.keras (built from the base the
    # replicas' weights were copied into) computes what was evaluated
    assert two.info["end_to_end_check_max_abs_diff"] < 0.02
    # within noise of one device: the all-reduce sums gradients in another order
    assert abs(two.metrics["test"]["accuracy"] - one.metrics["test"]["accuracy"]) <= 0.25
    assert "fine-tuning: top 1 block(s)" in (two.path / "report.md").read_text()


def test_more_devices_than_an_initialised_process_has_is_a_clear_error(extracted, capsys, monkeypatch):
    monkeypatch.chdir(extracted)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(extracted / "vggtl-cache"))
    from vggtl import tfquiet

    tfquiet.load().constant(1.0)  # this test process's TensorFlow is initialised
    assert train.main([str(extracted / "ft.yaml"), "--set", "finetune.devices=7", "--set", f"output.dir={extracted / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert "key 'finetune.devices': 7 devices asked, but TensorFlow is already initialised in this process" in err
    assert not (extracted / "x" / "tiny" / "v1").exists()


@pytest.mark.parametrize("value, ok", [("auto", True), (1, True), (4, True), (0, False), ("two", False), (True, False), (65, False)])
def test_finetune_devices_values(tmp_path, value, ok):
    cfg = write_config(tmp_path / "c.yaml", tmp_path, tmp_path, finetune={"devices": value})
    if ok:
        assert config.load(cfg).finetune.devices == value
    else:
        with pytest.raises(ConfigError, match=r"key 'finetune.devices': got .*; allowed: auto, or a number of devices from 1 to 64"):
            config.load(cfg)


def test_phase2_history_names_its_devices(extracted):
    history = json.loads((extracted / "one" / "tiny" / "latest" / "history.json").read_text())
    assert history["phase2"]["devices"] == "1 device"

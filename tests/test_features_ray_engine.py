"""Tests for vggtl.features.ray_engine: extraction on Ray actors.

Real Ray (a two-node ``ray.cluster_utils.Cluster`` of 1 CPU each, or a local
instance started by the run), tiny generated images and random or
file-shipped weights. The driver-kill resume test is the ``ray-engine`` case
of ``test_extract.test_resume_after_kill_matches_an_uninterrupted_run``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import numpy as np
import pytest
from conftest import make_dataset, needs_ray, write_config
from test_extract import add_problem_files, features_by_key

from vggtl import config, extract, train
from vggtl.backbones import build, resolve
from vggtl.backbones.spec import default_spec
from vggtl.errors import ConfigError
from vggtl.features import pipeline, ray_engine, store

pytestmark = needs_ray


def run_extract(cfg_path, *overrides):
    return extract.run(config.load(cfg_path, list(overrides)), progress=False, log=lambda _: None)


def max_abs_diff(got: dict, want: dict) -> float:
    return max(float(np.abs(got[layer][k].astype(np.float32) - want[layer][k].astype(np.float32)).max())
               for layer in want for k in want[layer])


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.mark.slow
def test_two_node_cluster_writes_the_local_engines_store_and_metrics(tmp_path, monkeypatch, two_node_cluster):
    monkeypatch.chdir(tmp_path)
    root = make_dataset(tmp_path / "data", per_class=14)
    add_problem_files(root)  # undecodable files are skipped by the actors with the local engine's reasons
    # A weights file, so the actors get it through Ray's object store.
    weights = tmp_path / "vgg16-32px.weights.h5"
    build.build_base(default_spec("vgg16", 32), resolve.random_weights(3), 3).save_weights(weights)
    cfg_path = write_config(tmp_path / "c.yaml", root, tmp_path, backbone={"weights": str(weights)})
    ray_cache, local_cache = tmp_path / "ray-cache", tmp_path / "local-cache"

    on_ray = run_extract(cfg_path, f"cache.path={ray_cache}", "extract.engine=ray",
                         f"extract.ray_address={two_node_cluster.address}", "extract.batch_size=4")
    local = run_extract(cfg_path, f"cache.path={local_cache}")

    assert on_ray.store_path.name == local.store_path.name  # same settings, same store
    assert on_ray.computed == local.computed > 0 and on_ray.skipped == local.skipped and len(local.skipped) == 3
    got, want = features_by_key(on_ray.store_path), features_by_key(local.store_path)
    assert got.keys() == want.keys() and all(got[layer].keys() == want[layer].keys() for layer in want)
    assert max_abs_diff(got, want) <= 1e-2  # float16 rounding of fp32 features computed with other thread counts

    metrics = {}
    for name, cache in (("ray", ray_cache), ("local", local_cache)):
        out = tmp_path / f"out-{name}"
        assert train.main([str(cfg_path), "--set", f"cache.path={cache}", "--set", f"output.dir={out}"]) == 0
        metrics[name] = json.loads(next(out.rglob("metrics.json")).read_text())
    for split in ("train", "val", "test"):
        for key in ("accuracy", "loss", "confusion_matrix"):
            assert metrics["ray"][split][key] == metrics["local"][split][key], (split, key)
    assert metrics["ray"]["baseline"] == metrics["local"]["baseline"]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_every_image_computed_once(tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    root = make_dataset(tmp_path / "data", per_class=12)
    cfg_path = write_config(tmp_path / "c.yaml", root, tmp_path)
    added: list[str] = []
    killed: list[int] = []
    real_add = store.PartWriter.add

    def add_then_kill_a_worker(self, keys, features):
        added.extend(keys)
        if not killed:  # first result back: the other batches are still in flight
            actor = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                         if a["name"].startswith(ray_engine.ACTOR_PREFIX))
            name = actor["name"]
            pid = ray.get(ray.get_actor(name, namespace=actor["namespace"]).pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return real_add(self, keys, features)

    monkeypatch.setattr(store.PartWriter, "add", add_then_kill_a_worker)
    result = run_extract(cfg_path, "extract.engine=ray", "extract.batch_size=2")
    monkeypatch.setattr(store.PartWriter, "add", real_add)
    clean = run_extract(cfg_path, f"cache.path={tmp_path / 'clean'}")

    assert killed, "no worker was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert sorted(added) == sorted(set(added)) and len(added) == 36  # every image exactly once
    assert result.computed == 36
    got, want = features_by_key(result.store_path), features_by_key(clean.store_path)
    assert got.keys() == want.keys() and all(got[layer].keys() == want[layer].keys() for layer in want)
    assert max_abs_diff(got, want) <= 1e-2
    assert not ray.is_initialized()  # the local instance the run started is gone


def test_weights_that_do_not_fit_fail_on_the_driver_and_leave_nothing(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", per_class=8)
    other = build.build_base(default_spec("mobilenet_v2", 32), resolve.random_weights(1), 1)
    wrong = tmp_path / "mobilenet.weights.h5"
    other.save_weights(wrong)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, backbone={"weights": str(wrong)})
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--no-progress", "--set", "extract.engine=ray"]) == 2
    err = capsys.readouterr().err
    assert f"error: weights file {wrong}, layer 'block1_conv1': expected one 4-D kernel" in err
    assert "Traceback" not in err
    leftovers = sorted(p.name for p in (tmp_path / "cache").rglob("*")) if (tmp_path / "cache").exists() else []
    assert all(name.endswith((".lock", ".lock.pid")) and name.startswith(".") for name in leftovers), leftovers


def test_missing_ray_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "data", per_class=4)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--no-progress", "--set", "extract.engine=ray"]) == 2
    assert "extract.engine: ray needs the optional package 'ray': pip install 'vggtl[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_unreachable_cluster_is_a_config_error(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=4)
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path)
    with pytest.raises(ConfigError, match=r"key 'extract.ray_address': cannot reach a Ray cluster at '127.0.0.1:1'"):
        run_extract(cfg, "extract.engine=ray", "extract.ray_address=127.0.0.1:1")


@pytest.mark.parametrize("wanted, cpus, expected", [(2, 2, 2), (4, 2, 2), (1, 8, 1), (3, 0.5, 1)])
def test_actor_count_is_capped_at_the_clusters_cpus(wanted, cpus, expected):
    notes: list[str] = []
    assert ray_engine.actor_count(wanted, cpus, notes.append) == expected
    assert bool(notes) == (expected < wanted)


def test_batches_hold_about_batch_size_entries():
    jobs = [pipeline.Job(file=None, keys=("a",) * n) for n in (1, 3, 1, 1, 2, 5)]
    assert [sum(len(j.keys) for j in b) for b in ray_engine._batches(jobs, 4)] == [4, 4, 5]

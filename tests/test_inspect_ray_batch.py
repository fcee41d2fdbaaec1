"""predict DIR --out FILE --engine ray: the batches on Ray actors, the same file as
the local engine, byte for byte; bad engine arguments are clear errors."""

from __future__ import annotations

import sys

import pytest

from conftest import make_unlabeled_folder, needs_extra
from tiny_artifact import make_artifact
from vggtl import predict
from vggtl.inspect import batch

N_IMAGES = 75  # three batches of 32, the last one short


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raybatch")
    art = make_artifact(tmp)
    make_unlabeled_folder(tmp / "photos", N_IMAGES, 4)
    return tmp, art


@needs_extra("ray")
def test_two_actors_write_the_local_engines_file_byte_for_byte(job, capsys):
    tmp, art = job
    local, remote = tmp / "local.csv", tmp / "ray.csv"
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(local)]) == 1  # the broken file
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(remote), "--engine", "ray", "--workers", "2"]) == 1
    assert remote.read_bytes() == local.read_bytes()
    assert "predict: Ray" in capsys.readouterr().err
    # resumable as the local engine is: a file cut inside the second batch is completed to the same bytes
    lines = local.read_bytes().split(b"\n")
    remote.write_bytes(b"\n".join(lines[: 1 + batch.BATCH + 3]) + b"\n")
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(remote), "--engine", "ray"]) == 1
    assert remote.read_bytes() == local.read_bytes()
    assert f"({batch.BATCH} kept from an interrupted run)" in capsys.readouterr().out


def test_bad_engine_arguments_exit_2(job, tmp_path, capsys, monkeypatch):
    tmp, art = job
    photos, out = str(tmp / "photos"), str(tmp_path / "p.csv")
    for argv, message in [([photos, "--engine", "ray"], "--engine ray computes the batches of --out"),
                          ([photos, "--out", out, "--ray-address", "auto"], "--ray-address needs --engine ray")]:
        assert predict.main([str(art), *argv]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main([str(art), photos, "--out", out, "--engine", "ray", "--workers", "0"])
    assert "expected a whole number >= 1, got 0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert predict.main([str(art), photos, "--out", out, "--engine", "ray"]) == 2
    assert "predict --engine ray needs the optional package 'ray': pip install 'vggtl[ray]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


@needs_extra("ray")
def test_an_unreachable_cluster_is_named(job, tmp_path, capsys):
    tmp, art = job
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(tmp_path / "p.csv"), "--engine", "ray",
                         "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--ray-address: cannot reach a Ray cluster at '127.0.0.1:1'" in err and "leave out --ray-address" in err

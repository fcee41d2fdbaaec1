"""predict --out FILE.csv: a folder streamed into one CSV, resumable after kill -9
with the same bytes as an uninterrupted run; other jobs' files refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import COLORS, make_image, make_unlabeled_folder, needs_extra
from tiny_artifact import make_artifact
from vggtl import predict
from vggtl.inspect import batch

N_IMAGES = 150  # five batches of 32 (the last one short)

SLOW_PREDICT = """
import sys, time
from vggtl.inspect import batch
rows = batch.batch_rows
def slow(*args):
    time.sleep(0.4)  # a window to kill it in, between and during batches
    return rows(*args)
batch.batch_rows = slow
from vggtl import predict
predict.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    art = make_artifact(tmp)
    make_unlabeled_folder(tmp / "photos", N_IMAGES, 7)
    reference = tmp / "reference.csv"
    with pytest.MonkeyPatch.context() as mp:
        # As every test here predicts (conftest's isolated_caches is per test, so
        # not yet in force): else an installed ONNX Runtime would write the
        # reference and TensorFlow the files compared with it (1e-6 apart).
        mp.setenv("VGGTL_PREDICT_RUNTIME", "tensorflow")
        assert predict.main([str(art), str(tmp / "photos"), "--out", str(reference)]) == 1  # one broken file
    return tmp, art, reference


def test_one_row_per_image_in_sorted_order_with_every_probability(job):
    tmp, art, reference = job
    lines = reference.read_text().splitlines()
    assert lines[0] == "path,predicted,confidence,p_blue,p_green,p_red,error"
    assert len(lines) == 1 + N_IMAGES + 1
    paths = [line.split(",")[0] for line in lines[1:]]
    assert paths == sorted(paths)
    broken = next(line for line in lines if "broken.png" in line)
    assert broken.split(",")[1:6] == ["", "", "", "", ""] and broken.endswith(",not an image file Pillow can read "
                                                                          "(wrong extension or corrupt header)")
    assert all(line.split(",")[1] == "red" for line in lines[1:] if "broken" not in line)  # the tiny artifact's favourite


def test_killed_at_any_moment_then_rerun_gives_the_same_bytes(job):
    tmp, art, reference = job
    out = tmp / "killed.csv"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, str(art), str(tmp / "photos"), "--out", str(out)],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 1 + 2 * batch.BATCH):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = out.read_text().count("\n")
    assert 1 + 2 * batch.BATCH <= written < 1 + N_IMAGES + 1  # stopped half-way
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(out)]) == 1
    assert out.read_bytes() == reference.read_bytes()


def test_a_line_cut_in_the_middle_of_a_batch_is_recomputed_whole(job, capsys):
    tmp, art, reference = job
    out = tmp / "cut.csv"
    data = reference.read_bytes()
    lines = data.split(b"\n")
    cut = b"\n".join(lines[: 1 + batch.BATCH + 5]) + b"\n" + lines[1 + batch.BATCH + 5][:10]  # a row half written
    out.write_bytes(cut)
    (tmp / "cut.csv.run.json").write_bytes((tmp / "reference.csv.run.json").read_bytes())
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(out)]) == 1
    assert out.read_bytes() == data
    assert f"({batch.BATCH} kept from an interrupted run)" in capsys.readouterr().out
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(out)]) == 1
    assert "is already complete" in capsys.readouterr().out


def test_a_file_of_another_job_is_refused_unless_overwrite(job, capsys):
    tmp, art, reference = job
    out = tmp / "other.csv"
    other = make_artifact(tmp / "b", favourite="blue")
    assert predict.main([str(other), str(tmp / "photos" / "1"), "--out", str(out)]) == 0
    before = out.read_bytes()
    assert predict.main([str(art), str(tmp / "photos" / "1"), "--out", str(out)]) == 2
    assert "already holds predictions of another artifact or other inputs" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing lost
    assert predict.main([str(art), str(tmp / "photos" / "1"), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != before


def test_bad_outputs_and_inputs_are_clear_errors(job, tmp_path, capsys):
    tmp, art, _ = job
    for argv, message in [(["--out", str(tmp_path / "missing" / "p.csv")], "does not exist; create it first"),
                          (["--out", str(tmp_path / "p.txt")], ".csv or .parquet is written"),
                          (["--out", str(tmp_path / "p.csv"), "--json"], "does not combine with")]:
        assert predict.main([str(art), str(tmp / "photos"), *argv]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict.main([str(art), str(tmp_path / "empty"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "contains no image" in capsys.readouterr().err


def test_an_unwritable_output_folder_fails_before_any_work(job, capsys):
    """/sys refuses new files even to root (chmod does not stop root)."""
    tmp, art, _ = job
    probe = "/sys/.vggtl-test-probe"
    try:
        open(probe, "w").close()
        os.unlink(probe)
        pytest.skip("/sys is writable here: no unwritable folder to test with")
    except OSError:
        pass
    assert predict.main([str(art), str(tmp / "photos"), "--out", "/sys/p.csv"]) == 2
    err = capsys.readouterr().err
    assert "cannot write into the --out folder /sys" in err and "Traceback" not in err


def test_an_image_that_vanished_gets_its_reason(job, tmp_path):
    from vggtl.inspect.predictions import batch_rows_of
    from vggtl.training import artifact

    tmp, art_dir, _ = job
    art = artifact.load(art_dir)
    gone = tmp_path / "gone.png"
    paths = [make_image(tmp_path / "a.png", COLORS["red"]), gone]
    result = batch.predict_to_csv(art, paths, tmp_path / "v.csv", batch.in_process(batch_rows_of(art)))
    assert result["errors"] == 1
    assert "gone.png" in (tmp_path / "v.csv").read_text().splitlines()[2]


@needs_extra("parquet")
def test_parquet_holds_the_csv_rows_typed_and_resumes_to_the_same_bytes(job, capsys):
    import csv

    import pyarrow.parquet as pq

    tmp, art, reference = job
    out = tmp / "p.parquet"
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(out)]) == 1  # the broken file, as in the CSV
    table = pq.read_table(out).to_pylist()
    with open(reference, newline="") as fh:
        expected = list(csv.DictReader(fh))
    assert [list(r) for r in table[:1]] == [list(expected[0])] and len(table) == len(expected)
    for got, want in zip(table, expected):
        for name, value in want.items():
            if value == "":
                assert got[name] is None, name
            elif name in ("path", "predicted", "error"):
                assert got[name] == value
            elif name == "unknown":
                assert got[name] is (value == "true")
            else:
                assert got[name] == float(value), name
    assert not (tmp / "p.parquet.partial.csv").exists()
    # killed with a batch half written into the journal: the rerun gives the same bytes
    resumed = tmp / "r.parquet"
    lines = reference.read_bytes().split(b"\n")
    (tmp / "r.parquet.partial.csv").write_bytes(b"\n".join(lines[: 1 + batch.BATCH + 5]) + b"\n" + lines[1 + batch.BATCH + 5][:10])
    (tmp / "r.parquet.partial.csv.run.json").write_bytes((tmp / "reference.csv.run.json").read_bytes())
    capsys.readouterr()
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(resumed)]) == 1
    assert f"({batch.BATCH} kept from an interrupted run)" in capsys.readouterr().out
    assert resumed.read_bytes() == out.read_bytes() and not (tmp / "r.parquet.partial.csv").exists()
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(resumed)]) == 1
    assert "is already complete" in capsys.readouterr().out
    # another job's file is refused, nothing lost
    assert predict.main([str(art), str(tmp / "photos" / "1"), "--out", str(resumed)]) == 2
    assert "already holds predictions of another artifact or other inputs" in capsys.readouterr().err
    assert resumed.read_bytes() == out.read_bytes()


def test_parquet_without_pyarrow_names_the_extra(job, tmp_path, capsys, monkeypatch):
    tmp, art, _ = job
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert predict.main([str(art), str(tmp / "photos"), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "pip install 'vggtl[parquet]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

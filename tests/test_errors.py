"""User-facing errors: one paragraph naming the path, exit 2, nothing lost.

Filesystem failures are the user's environment, not vggtl bugs: a cache or
output directory below a regular file, a directory vggtl may not write, a
disk that fills up in the middle of an extraction. Each must end as one
paragraph naming the path, exit status 2, no traceback, and the feature
store and earlier artifacts exactly as they were.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import make_dataset, run_pipeline, write_config
from vggtl import extract, train
from vggtl.errors import PathError, VggtlError, cli_entry, describe_os_error


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_describe_os_error_names_path_reason_and_remedy():
    exc = OSError(errno.ENOSPC, "No space left on device", "/data/cache/x.h5")
    assert describe_os_error(exc, action="write the feature store") == (
        "cannot write the feature store /data/cache/x.h5: No space left on device; "
        "free some disk space or choose a directory on another disk"
    )
    # h5py puts the errno in its text only
    h5 = OSError("Can't write data (file write failed: ..., errno = 27, error message = 'File too large')")
    assert "ulimit -f" in describe_os_error(h5, "/x.h5", "write the feature store part")


def test_cli_entry_turns_os_errors_into_exit_2(capsys):
    @cli_entry
    def main(argv=None):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/file")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot access /somewhere/file: Permission denied; check the permissions")
    assert "Traceback" not in err
    assert issubclass(PathError, VggtlError)


@pytest.fixture(scope="module")
def pipeline_template(tmp_path_factory):
    """Extract + train once on a tiny tree, for the module's tests to copy."""
    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = write_config(tmp / "c.yaml", make_dataset(tmp / "data"), tmp)
    return run_pipeline(tmp, cfg, [[str(cfg)]])


@pytest.fixture
def pipeline_dir(pipeline_template, tmp_path):
    """A copy of :func:`pipeline_template` of this test's own (its config pointing
    at the copy): the directory, cwd for commands. Each test may break it."""
    copy = Path(shutil.copytree(pipeline_template, tmp_path / "pipeline", symlinks=True))
    (copy / "c.yaml").write_text((copy / "c.yaml").read_text().replace(str(pipeline_template), str(copy)))
    return copy


def the_store(tmp: Path) -> Path:
    (store,) = (tmp / "cache").glob("tiny-*.h5")
    return store


@contextmanager
def file_size_limit(limit_bytes: int):
    """Every file this process writes meanwhile stops growing at ``limit_bytes``
    (RLIMIT_FSIZE: what a full disk looks like to a writer, EFBIG instead of
    ENOSPC). In this process rather than a fresh one: the same command code,
    without a second TensorFlow import."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def extract_in(tmp: Path, monkeypatch, capsys, limit_bytes: int) -> tuple[int, str]:
    """``vggtl extract c.yaml`` in ``tmp`` with every file limited to
    ``limit_bytes``: ``(exit status, stderr)``."""
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(tmp / "vggtl-cache"))
    capsys.readouterr()
    with file_size_limit(limit_bytes):
        code = extract.main(["c.yaml", "--no-progress"])
    return code, capsys.readouterr().err


def test_full_disk_during_extract_keeps_the_store(pipeline_dir, capsys, monkeypatch):
    store = the_store(pipeline_dir)
    before = sha256(store)
    make_dataset(pipeline_dir / "data", per_class=4, start=100)  # new images: the store must be rewritten
    code, err = extract_in(pipeline_dir, monkeypatch, capsys, limit_bytes=4096)
    assert code == 2, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: cannot write the feature store part {store}.parts/part-")
    assert "File too large; the file-size limit was reached" in line
    assert sha256(store) == before
    leftovers = [p.name for p in store.parent.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    # the next run, with room again, finishes the job
    assert extract.main(["c.yaml", "--no-progress"]) == 0
    assert "computed 12, reused 36" in capsys.readouterr().out


def test_full_disk_while_publishing_the_store_keeps_the_old_one(pipeline_dir, capsys, monkeypatch):
    """The last write (the whole store) fails: the published store is untouched."""
    store = the_store(pipeline_dir)
    before = sha256(store)
    make_dataset(pipeline_dir / "data", per_class=1, start=200)
    limit = store.stat().st_size  # parts fit, the new store (3 more rows) does not
    code, err = extract_in(pipeline_dir, monkeypatch, capsys, limit_bytes=limit)
    assert code == 2, err
    assert "Traceback" not in err
    assert f"error: cannot write the feature store {store}: " in err
    assert sha256(store) == before
    assert not [p for p in store.parent.iterdir() if ".tmp-" in p.name]


def test_cache_path_below_a_regular_file(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "data")
    (tmp_path / "afile").write_text("not a directory")
    cfg = write_config(tmp_path / "c.yaml", root, tmp_path, cache={"path": str(tmp_path / "afile" / "cache")})
    monkeypatch.chdir(tmp_path)
    assert extract.main([str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot create the cache.path directory {tmp_path / 'afile' / 'cache'}: Not a directory" in err
    assert "a part of this path is a regular file" in err and "Traceback" not in err


def versions_and_digests(run_dir: Path) -> dict:
    return {p.relative_to(run_dir).as_posix(): sha256(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_output_dir_below_a_regular_file(pipeline_dir, capsys, monkeypatch):
    store = the_store(pipeline_dir)
    before = sha256(store)
    (pipeline_dir / "afile").write_text("x")
    monkeypatch.chdir(pipeline_dir)
    code = train.main(["c.yaml", "--set", f"output.dir={pipeline_dir / 'afile' / 'out'}"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "phase 1" not in out
    assert f"error: cannot create the output.dir directory {pipeline_dir / 'afile' / 'out' / 'tiny'}: Not a directory" in err
    assert "Traceback" not in err and sha256(store) == before


@contextmanager
def unwritable(directory: Path):
    """Make ``directory`` unwritable for this process: chmod for a normal user;
    as root (which ignores modes) the immutable attribute, where supported."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root and cannot make {directory} immutable: {made.stderr.strip() or 'chattr failed'}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_unwritable_output_dir_keeps_store_and_earlier_artifacts(pipeline_dir, capsys, monkeypatch):
    store, run_dir = the_store(pipeline_dir), pipeline_dir / "experiments" / "tiny"
    before_store, before_artifacts = sha256(store), versions_and_digests(run_dir)
    monkeypatch.chdir(pipeline_dir)
    with unwritable(run_dir):
        code = train.main(["c.yaml"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "phase 1" not in out  # refused before training, not after it
    assert "Traceback" not in err
    assert str(run_dir) in err and ("Permission denied" in err or "Operation not permitted" in err or "permission denied" in err)
    assert sha256(store) == before_store
    assert versions_and_digests(run_dir) == before_artifacts  # v1 and latest untouched, no v2, no staging left


# --------------------------------------------------------------------------- issue 24, case 11: messages that pointed the wrong way


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny tree and config in the working directory."""
    monkeypatch.chdir(tmp_path)
    return write_config(tmp_path / "c.yaml", make_dataset(tmp_path / "data", per_class=4), tmp_path)


def test_a_class_folder_that_cannot_be_listed_says_permission_denied(tiny, tmp_path, capsys, monkeypatch):
    real = os.scandir

    def scandir(path="."):  # as for a mode-000 folder (root reads it anyway, so it is simulated)
        if Path(path) == tmp_path / "data" / "red":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert extract.main([str(tiny), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot list the folder {tmp_path / 'data' / 'red'}: Permission denied; check its permissions" in err
    assert "contains no image" not in err and "write" not in err


def test_an_image_that_cannot_be_read_gets_advice_about_reading(tiny, tmp_path, capsys, monkeypatch):
    import importlib

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(importlib.import_module("vggtl.data.scan"), "sha256_file", refuse)
    assert extract.main([str(tiny), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the image file" in err and "must be able to read it" in err and "you can write" not in err


def test_data_csv_naming_a_directory_says_so(tiny, capsys):
    assert extract.main([str(tiny), "--set", "data.csv=/tmp"]) == 2
    assert "key 'data.csv': '/tmp' is a directory, not a CSV file" in capsys.readouterr().err


def test_a_mistyped_set_key_is_blamed_on_set_not_the_file(tiny, capsys):
    assert train.main([str(tiny), "--set", "head.unit=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set 'head.unit=3' (over ") and "Did you mean 'units'?" in err
    assert train.main([str(tiny), "--set", "head.units=[4]", "--set", "train.epochs=0"]) == 2
    assert "--set 'train.epochs=0'" in capsys.readouterr().err
    assert train.main([str(tiny), "--set", "trian.epochs=3"]) == 2  # a mistyped section
    assert capsys.readouterr().err.startswith("error: --set 'trian.epochs=3' (over ")


def test_a_single_class_folder_as_root_is_recognised(tiny, tmp_path, capsys):
    assert extract.main([str(tiny), "--set", "data.root=data/red"]) == 2
    err = capsys.readouterr().err
    assert "data/red: holds 4 image(s) but 0 class folder(s): it looks like one class's folder" in err
    assert repr(str(tmp_path / "data")) in err


def test_a_dangling_latest_names_the_missing_version(tmp_path, capsys):
    from vggtl import predict

    run = tmp_path / "experiments" / "tiny"
    (run / "v1").mkdir(parents=True)
    (run / "latest").symlink_to("v2")
    for target in (run, run / "latest"):
        assert predict.main([str(target), str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert "latest points to v2, which does not exist (deleted or moved); versions here: v1" in err


def test_hints_and_help_name_commands_the_way_the_user_ran_vggtl(tiny, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/vggtl", "train"])
    assert train.main([str(tiny)]) == 2
    assert f"run: vggtl extract {tiny}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        extract.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: vggtl extract") and "vggtl extract CONFIG:" in out and "python -m" not in out
    monkeypatch.setattr(sys, "argv", ["/x/vggtl/train.py"])  # python -m vggtl.train
    assert train.main([str(tiny)]) == 2
    assert f"run: python -m vggtl.extract {tiny}" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["folder", "csv", "name"])
def test_a_line_break_in_a_class_or_run_name_is_refused(tiny, tmp_path, capsys, where):
    """It broke every line of text and table row naming the class (issue 24 case 14)."""
    argv = [str(tiny), "--no-progress"]
    if where == "folder":
        (tmp_path / "data" / "red").rename(tmp_path / "data" / "re\nd")
        expected = "class 're\\nd' has a line break or another control character in its name; rename it"
    elif where == "csv":
        (tmp_path / "list.csv").write_text('path,label\nred/red_000.png,"re\nd"\ngreen/green_000.png,green\n')
        argv += ["--set", f"data.csv={tmp_path / 'list.csv'}"]
        expected = "list.csv (column label): class 're\\nd' has a line break"
    else:
        argv += ["--set", 'name="a\\nb"']  # YAML's escape: a real line break
        expected = "key 'name': got 'a\\nb'; use a plain name without slashes, line breaks or other control characters"
    assert extract.main(argv) == 2
    assert expected in capsys.readouterr().err

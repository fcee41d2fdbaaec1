"""The vggtl console script dispatches to the stage modules; python -m works too."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vggtl import cli


def test_usage_and_unknown_command(capsys):
    assert cli.main([]) == 2
    assert "usage: vggtl <command>" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'\n" in err and "did you mean" not in err
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err


def test_version(capsys):
    import vggtl

    assert cli.main(["--version"]) == 0
    assert vggtl.__version__ in capsys.readouterr().out


def test_dispatch_reaches_module(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a config error travels through the dispatcher as exit status 2, no traceback
    (tmp_path / "bad.yaml").write_text("name: x\ndata: {root: ., imgae_size: 3}\n")
    assert cli.main(["extract", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'image_size'" in err and "Traceback" not in err


def test_python_dash_m_config_error_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\ndata: {root: missing-dir}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vggtl.extract", "c.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "key 'data.root': directory 'missing-dir' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_lists_the_view_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  classify " in out and "  summary " in out


def test_dispatch_reaches_classify_and_summary(tmp_path, capsys):
    assert cli.main(["classify", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg' does not exist" in capsys.readouterr().err
    assert cli.main(["summary", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["extract", "train", "predict", "classify", "summary", "weights"])
def test_help_is_plain_text(command, capsys):
    """--help shows the command's docstring without reST markup."""
    import importlib

    module = importlib.import_module(f"vggtl.{command}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    assert "``" not in out and ":mod:" not in out and ":func:" not in out
    assert module.__doc__.strip().splitlines()[0] in out


def test_description_strips_rest_markup():
    assert cli.description("Use ``vggtl.train.run`` and :func:`~vggtl.config.load`.") == "Use vggtl.train.run and vggtl.config.load."


def test_terminal_writes_live_while_stderr_is_filtered():
    """Progress bars write through tfquiet.terminal(): they appear at once, before
    what filtered_stderr holds back until the end."""
    code = (
        "import sys\n"
        "from vggtl import tfquiet\n"
        "with tfquiet.filtered_stderr():\n"
        "    print('held back', file=sys.stderr, flush=True)\n"
        "    stream = tfquiet.terminal(); stream.write('live\\n'); stream.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["live", "held back"]


def test_ctrl_c_says_nothing_half_written_was_published_and_that_a_rerun_resumes(capsys):
    from vggtl.errors import cli_entry

    @cli_entry
    def main(argv=None):
        raise KeyboardInterrupt

    assert main([]) == 130
    err = capsys.readouterr().err
    assert "interrupted: nothing half-written was published; run the command again" in err
    assert "extract keeps the features it had finished" in err and "Traceback" not in err


def test_a_command_process_skips_the_final_garbage_collections(tmp_path):
    """Every object is moved to the permanent generation at exit (Python's final
    collections walked TensorFlow's objects for ~1.2 s after the last line), and
    the command's own output and atexit handlers are untouched."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, flush=True))\n"
        "from vggtl import runs\n"
        "code = runs.main([sys.argv[1]])\n"
        "print('after the command frozen:', gc.get_freeze_count() > 0, flush=True)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "error:" in done.stderr  # no runs there: a user error, said as before
    assert "after the command frozen: False" in done.stdout  # nothing changes until the process exits
    assert done.stdout.rstrip().endswith("frozen at exit: True")

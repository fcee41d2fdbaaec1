"""The README must document every config key and the exact CI test command."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO
from vggtl import config


def test_every_config_key_is_documented():
    readme = (REPO / "README.md").read_text()
    missing = [key for key, _, _ in config.describe_keys() if f"`{key}`" not in readme]
    assert not missing, f"README.md lacks config keys: {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = ".venv/bin/python -m pytest -q"
    assert command in readme.split("## Concepts")[0], "quickstart must show the test command"
    assert command in ci


def readme_python_api_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Python-API block, unchanged, on a tiny generated dataset
    standing in for data/demo and configs/demo.yaml (random weights, 32 px)."""
    import yaml

    from conftest import make_dataset, write_config

    root = make_dataset(tmp_path / "data" / "demo")
    (root / "red").rename(root / "birds")
    (tmp_path / "configs").mkdir()
    write_config(tmp_path / "configs" / "demo.yaml", Path("data/demo"), Path("."), name="demo")
    monkeypatch.chdir(tmp_path)
    code = readme_python_api_example()
    assert 'config.load("configs/demo.yaml"' in code and "predict.predict_paths(" in code
    exec(compile(code, "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out.splitlines()  # the library's progress lines, then the example's prints
    assert any(line.startswith("36 computed, 0 reused -> ") for line in out)
    assert any(line.startswith(str(Path("experiments/demo/v1").resolve()) + " test accuracy") for line in out)
    predictions = [line for line in out if line.startswith("data/demo/birds/")]
    assert len(predictions) == 3 and all("[(" in line for line in predictions)
    cfg = yaml.safe_load((tmp_path / "experiments/demo/v1/config.yaml").read_text())
    assert cfg["train"]["epochs"] == 50 and cfg["head"]["units"] == [256]

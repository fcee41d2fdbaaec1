"""The README must document every config key and the exact CI test command."""

from __future__ import annotations

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

"""README.md and the docs site (docs/, mkdocs.yml): a short README that
reaches every page, every config key documented, the code blocks run as
written, the exact CI test command, and a strict MkDocs build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, needs_extra
from vggtl import config

DOCS = REPO / "docs"
README_MAX_LINES = 250


def nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav lists, in order."""
    def walk(entries):
        for entry in entries:
            for value in entry.values():
                yield from walk(value) if isinstance(value, list) else [value]

    return list(walk(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]))


def test_the_readme_is_short_and_reaches_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", readme))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages == set(nav_pages()), "every page in docs/ is in mkdocs.yml's nav, and only those"
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_point_at_files_and_headings_that_exist():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    targets = [t.split("#")[0] for t in links if not t.startswith(("http", "#"))]
    missing = [t for t in targets if not (REPO / t).exists()]
    assert targets and not missing, f"README links to missing files: {missing}"
    headings = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)}
    broken = [t for t in links if t.startswith("#") and t[1:] not in headings]
    assert not broken, f"README links to headings it does not have: {broken}"


def test_every_config_key_is_documented():
    page = (DOCS / "configuration.md").read_text()
    missing = [key for key, _, _ in config.describe_keys() if f"`{key}`" not in page]
    assert not missing, f"docs/configuration.md lacks config keys: {missing}"


@needs_extra("docs")
def test_the_docs_build_strictly(tmp_path):
    """mkdocs build --strict: no broken link, anchor or page left out of the nav."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = ".venv/bin/python -m pytest -q"
    assert command in readme.split("## Concepts")[0], "quickstart must show the test command"
    assert command in ci


def python_api_example() -> str:
    page = (DOCS / "python-api.md").read_text()
    return page.split("```python\n", 1)[1].split("```", 1)[0]


def test_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The docs' Python-API block, unchanged, on a tiny generated dataset
    standing in for data/demo and configs/demo.yaml (random weights, 32 px)."""
    import yaml

    from conftest import make_dataset, write_config

    root = make_dataset(tmp_path / "data" / "demo")
    (root / "red").rename(root / "birds")
    (tmp_path / "configs").mkdir()
    write_config(tmp_path / "configs" / "demo.yaml", Path("data/demo"), Path("."), name="demo")
    monkeypatch.chdir(tmp_path)
    code = python_api_example()
    assert 'config.load("configs/demo.yaml"' in code and "predict.predict_paths(" in code
    exec(compile(code, "docs/python-api.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()  # the library's progress lines, then the example's prints
    assert any(line.startswith("36 computed, 0 reused -> ") for line in out)
    assert any(line.startswith(str(Path("experiments/demo/v1").resolve()) + " test accuracy") for line in out)
    predictions = [line for line in out if line.startswith("data/demo/birds/")]
    assert len(predictions) == 3 and all("[(" in line for line in predictions)
    cfg = yaml.safe_load((tmp_path / "experiments/demo/v1/config.yaml").read_text())
    assert cfg["train"]["epochs"] == 50 and cfg["head"]["units"] == [256]

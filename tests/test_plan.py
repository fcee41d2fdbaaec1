"""The run plan: one scan, one store location, and the split computed in one place."""

from __future__ import annotations

import ast
import inspect
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, make_dataset, make_image, write_config
from vggtl import config, data, extract, plan, train
from vggtl.errors import DataError, StoreError


@pytest.fixture
def tiny(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=8)
    return config.load(write_config(tmp_path / "tiny.yaml", root, tmp_path))


def test_a_plan_holds_the_scanned_files_unsplit_and_the_store(tiny):
    the_plan = plan.resolve(tiny)
    assert len(the_plan.dataset.files) == 24
    assert {f.split for f in the_plan.dataset.files} == {None}  # scanning decides no split
    assert the_plan.store.path.parent == Path(tiny.cache.path)
    assert the_plan.weights.random and the_plan.store.format.settings["backbone"] == "vgg16"
    split = the_plan.split()
    assert {s: sum(split.counts()[s].values()) for s in data.SPLITS} == {"train": 12, "val": 6, "test": 6}
    with pytest.raises(AttributeError):
        the_plan.cfg = tiny  # frozen: a plan is resolved once


def test_the_split_leaves_out_undecodable_files_and_refuses_a_class_they_empty(tiny):
    the_plan = plan.resolve(tiny)
    reds = [f.sha256 for f in the_plan.dataset.files if f.relpath.startswith("red/")]
    red = [f for f in the_plan.split(reds[:2]).files if f.relpath.startswith("red/")]
    assert [f.split for f in red if f.sha256 in reds[:2]] == ["train", "train"]  # not counted (skipped anyway)
    assert Counter(f.split for f in red if f.sha256 not in reds[:2]) == {"train": 2, "val": 2, "test": 2}
    with pytest.raises(DataError, match="class 'red' has 2 usable image"):
        the_plan.split(reds[:6])  # 2 usable images cannot fill train, val and test


def test_a_class_too_small_to_split_is_refused_when_planning(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=8)
    for f in sorted((root / "red").iterdir())[2:]:
        f.unlink()
    with pytest.raises(DataError, match="red"):
        plan.resolve(config.load(write_config(tmp_path / "c.yaml", root, tmp_path)))


def test_extract_and_train_take_the_plan_and_split_only_through_it(tiny, tmp_path, monkeypatch):
    """Given a plan, neither command scans again; every split made on the way is
    :meth:`RunPlan.split` (the one place the split is computed)."""
    the_plan = plan.resolve(tiny)
    callers = []
    original = data.Dataset.with_split

    def recording(self, *args, **kwargs):
        callers.append(inspect.stack()[1].function)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(data.Dataset, "with_split", recording)
    monkeypatch.setattr(plan, "scan", lambda cfg: pytest.fail("scanned again although a plan was given"))
    monkeypatch.chdir(tmp_path)
    result = extract.run(the_plan, progress=False, log=lambda _: None)
    art = train.run(the_plan, log=lambda _: None)
    assert result.computed == 24 and art.metrics["split"]["digest"] == result.dataset.split_digest()
    assert callers and set(callers) == {"split"}


def test_only_the_plan_calls_the_split_rule():
    """``Dataset.with_split`` (which applies :func:`vggtl.splits.assign`) is called
    from :meth:`vggtl.plan.RunPlan.split` alone."""
    callers = []
    for path in sorted((REPO / "vggtl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("with_split", "assign"):
                callers.append((path.relative_to(REPO).as_posix(), node.func.attr))
    assert sorted(callers) == [("vggtl/data/dataset.py", "assign"), ("vggtl/plan.py", "with_split")]


def test_a_stale_plan_is_refused_by_train(tiny, tmp_path, monkeypatch):
    """A plan is a snapshot of the data: after an image is edited and the store
    updated, training from the old plan is refused, not run on mixed data."""
    monkeypatch.chdir(tmp_path)
    stale = plan.resolve(tiny)
    assert extract.run(stale, progress=False, log=lambda _: None).computed == 24
    make_image(Path(tiny.data.root) / "red" / "red_000.png", (10, 200, 10), seed=99)
    assert extract.run(tiny, progress=False, log=lambda _: None).computed == 1
    with pytest.raises(StoreError, match="out of date"):
        train.run(stale, log=lambda _: None)

"""Shared fixtures: isolated caches, tiny generated datasets, real-weights
lookup, and the marks of tests that need an optional extra."""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLIPART8 = SHARED / "datasets" / "clipart8"


def find_real_weights(shared_dir: Path) -> Path:
    """The real VGG16 notop weights: ``shared_dir``'s copy, else where ``vggtl
    weights fetch`` (the quickstart) or Keras put them -- looked up at import,
    before :func:`isolated_caches` points the caches at empty test folders."""
    shared = shared_dir / "weights" / "vgg16_imagenet_notop.weights.h5"
    if shared.is_file():
        return shared
    from vggtl.backbones import vgg16_offline

    found = [path for _, path in vgg16_offline.candidate_paths() if path is not None and path.is_file()]
    return found[0] if found else shared


REAL_WEIGHTS = find_real_weights(SHARED)

COLORS = {"red": (200, 40, 40), "green": (40, 180, 40), "blue": (40, 40, 200)}


def pytest_configure(config):
    """Each process that runs tests imports TensorFlow and Keras first, as
    vggtl's commands do (:func:`vggtl.tfquiet.load`: no garbage collection
    during the import, its objects then frozen out of the collector's way, so
    no later full collection walks them). Not in xdist's controller, which
    runs no test."""
    controller = config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None) \
        and not hasattr(config, "workerinput")
    if not controller:
        from vggtl import tfquiet

        tfquiet.load()


@pytest.fixture(scope="module", autouse=True)
def collected_after_each_module():
    """After a module (its fixtures torn down), collect what it left in cycles
    and move what lives on to the permanent generation (``gc.freeze``), as
    :func:`vggtl.tfquiet.load` does after TensorFlow's import: the automatic
    full collections of the next modules then walk only their own objects.
    A worker runs ~25 modules; before, each of its ~30 full collections walked
    every model, graph and array all earlier modules had kept (~0.2 s each)."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.cache/vggtl or ~/.keras during tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(home / "vggtl-cache"))
    monkeypatch.setenv("KERAS_HOME", str(home / "keras"))
    monkeypatch.delenv("VGGTL_VGG16_WEIGHTS", raising=False)
    # predict runs model.keras as it always did; tests of the converted runtimes
    # (test_inspect_converted.py) choose theirs.
    monkeypatch.setenv("VGGTL_PREDICT_RUNTIME", "tensorflow")


def make_image(path: Path, color, size=32, seed=0, mode="RGB", fmt=None):
    """A noisy solid-color image (so classes are learnable but not trivial)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(0, 30, (size, size, 3)) + np.array(color), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def make_unlabeled_folder(folder: Path, n: int, subfolders: int) -> Path:
    """``n`` images of the three colours spread over ``subfolders`` subfolders,
    plus ``<folder>/<subfolders - 1>/broken.png`` that is not an image (a folder to predict)."""
    names = list(COLORS)
    for i in range(n):
        make_image(folder / f"{i % subfolders}" / f"img_{i:03d}.png", COLORS[names[i % 3]], seed=i)
    (folder / f"{subfolders - 1}" / "broken.png").write_bytes(b"not an image")
    return folder


def make_dataset(root: Path, per_class: int = 12, classes=("red", "green", "blue"), size=32, start=0):
    for name in classes:
        for i in range(start, start + per_class):
            make_image(root / name / f"{name}_{i:03d}.png", COLORS[name], size=size, seed=1000 * classes.index(name) + i)
    return root


# backbone.width of the tests' random VGG: 1/8 of the channels, 1/64 of the
# weights (every artifact is saved, hashed, loaded and converted: that is
# where a full-width random VGG16 spent the suite's time).
TEST_WIDTH = 0.125


def tiny_backbone(backbone: dict) -> dict:
    """``backbone`` with :data:`TEST_WIDTH` filled in where it can apply: a
    random VGG whose width the test did not set."""
    from vggtl.backbones import registry

    if backbone.get("weights", "imagenet") is None and backbone.get("name", registry.DEFAULT) in registry.NARROWABLE:
        return {"width": TEST_WIDTH, **backbone}
    return backbone


def write_config(path: Path, root: Path, tmp: Path, **sections) -> Path:
    """A tiny, fast config: 32x32 images, a narrow VGG16 with random weights."""
    import yaml

    cfg = {
        "name": "tiny",
        "seed": 7,
        "data": {"root": str(root), "image_size": 32, "split": {"val": 0.25, "test": 0.25}},
        "backbone": {"weights": None},
        "cache": {"path": str(tmp / "cache")},
        "train": {"epochs": 40, "batch_size": 8, "early_stopping_patience": 8, "learning_rate": 0.01},
        "head": {"units": [16]},
        "output": {"dir": str(tmp / "experiments")},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    cfg["backbone"] = tiny_backbone(cfg["backbone"])
    path.write_text(yaml.safe_dump(cfg))
    return path


# --------------------------------------------------------------------------- optional extras


def _extras() -> dict[str, list[str]]:
    """``{extra: [distribution, ...]}`` as pyproject.toml declares them (one source of truth)."""
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {extra: [re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0] for req in reqs] for extra, reqs in table.items()}


EXTRAS = _extras()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_extra(*extras: str) -> str | None:
    """Why a test needing ``extras`` cannot run here (the extra named, with its
    pip command), or None when every distribution they list is installed."""
    for extra in extras:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra {extra!r}; pyproject.toml declares {sorted(EXTRAS)}")
        absent = [name for name in EXTRAS[extra] if not _installed(name)]
        if absent:
            return f"needs the optional extra vggtl[{extra}] ({', '.join(absent)} not installed): pip install 'vggtl[{extra}]'"
    return None


def needs_extra(*extras: str):
    """Mark a test (or a ``pytest.param``) that needs optional extras: it skips,
    naming the extra, when one is missing, and ``pytest -m extra`` selects it."""
    return pytest.mark.extra(*extras)


def require_extra(*extras: str) -> None:
    """Inside a test: skip it, naming the extra, when one of ``extras`` is missing."""
    reason = missing_extra(*extras)
    if reason:
        pytest.skip(reason)


# The slowest modules (their tests' durations summed, measured on 2 cores),
# slowest first. xdist (--dist loadfile --no-loadscope-reorder, pyproject.toml)
# hands modules to the workers in collection order: starting with these, one
# worker does not meet a 20-s module at the end while the other is done.
# Order only: a module not listed runs after these, in the order collected;
# a stale entry costs nothing.
SLOWEST_MODULES = (
    "test_train.py", "test_export.py", "test_training_leakage.py", "test_extract.py", "test_training_devices.py",
    "test_backbones_resolve.py", "test_real_weights.py", "test_training_heads.py", "test_training_baselines.py",
    "test_errors.py", "test_compat.py", "test_predict.py", "test_inspect_batch.py", "test_training_cv.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("extra"):
            if reason := missing_extra(*mark.args):
                item.add_marker(pytest.mark.skip(reason=reason))
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: collection order otherwise


needs_ray = needs_extra("ray")
needs_real_weights = pytest.mark.skipif(
    not REAL_WEIGHTS.is_file(),
    reason=f"real VGG16 weights absent ({REAL_WEIGHTS}; `python -m vggtl.weights fetch` provisions them)",
)
needs_clipart8 = pytest.mark.skipif(not CLIPART8.is_dir(), reason=f"the clipart8 dataset is absent ({CLIPART8})")


def run_pipeline(tmp: Path, cfg: Path, train_argvs) -> Path:
    """extract CONFIG, then train once per argv in ``train_argvs``, inside ``tmp``
    (the working directory and the vggtl cache), asserting every exit status is 0."""
    from vggtl import extract, train

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("VGGTL_CACHE_DIR", str(tmp / "vggtl-cache"))
        assert extract.main([str(cfg), "--no-progress"]) == 0
        for argv in train_argvs:
            assert train.main(argv) == 0
    return tmp


# --------------------------------------------------------------------------- pages in a real browser

CHROMIUM = Path("/usr/bin/chromium")


def chromium_page(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"])
    return browser, browser.new_page(viewport={"width": 1280, "height": 900})


def browser_or_skip():
    """Playwright's sync API, or a skip naming what is missing (a failure where
    CI sets VGGTL_REQUIRE_BROWSER: there the browser test must run)."""
    missing = None if CHROMIUM.is_file() else "Debian's chromium is not installed (apt-get install chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        missing, sync_api = "playwright is not installed (pip install 'vggtl[dev]')", None
    if missing and os.environ.get("VGGTL_REQUIRE_BROWSER"):
        pytest.fail(f"VGGTL_REQUIRE_BROWSER is set but {missing}")
    if missing:
        pytest.skip(f"{missing}: report.html is not opened in a browser")
    return sync_api


@contextlib.contextmanager
def page_in_chromium(path: Path):
    """The page ``path`` opened in Debian's chromium (the test skips, or fails
    under VGGTL_REQUIRE_BROWSER, without it); after the block, asserts the
    page logged no error and fetched nothing but file: and data: URLs."""
    sync_api = browser_or_skip()
    errors, requests = [], []
    with sync_api.sync_playwright() as playwright:
        browser, page = chromium_page(playwright)
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(Path(path).as_uri())
        yield page
        browser.close()
    assert errors == []
    assert [url for url in requests if not url.startswith(("file://", "data:"))] == []

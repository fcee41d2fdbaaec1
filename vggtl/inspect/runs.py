"""The versions of a run, side by side: what changed and what it did to the numbers.

Reads the metadata every artifact carries (``info.json``, ``metrics.json``,
``config.yaml``) without loading models or verifying checksums (``predict``
does that), so listing many versions is instant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from vggtl.errors import ArtifactError
from vggtl.training.results import RunMetrics

_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Version:
    """One artifact version's metadata."""

    name: str
    path: Path
    info: dict
    metrics: RunMetrics
    config: dict


def versions(run_dir) -> list[Version]:
    """Every complete version under ``run_dir`` (``<output.dir>/<name>``), oldest first.

    Raises:
        ArtifactError: ``run_dir`` holds no version.
    """
    run_dir = Path(run_dir)
    found = sorted(
        (int(m.group(1)), p) for p in (run_dir.iterdir() if run_dir.is_dir() else []) if (m := _VERSION.match(p.name))
    )
    result = [_read(f"v{n}", p) for n, p in found if (p / "info.json").is_file()]
    if not result:
        raise ArtifactError(f"{run_dir}: no artifact versions (v1, v2, ...) here; train writes them")
    return result


def _read(name: str, path: Path) -> Version:
    try:
        return Version(
            name, path, json.loads((path / "info.json").read_text()),
            RunMetrics.from_json(json.loads((path / "metrics.json").read_text())),
            yaml.safe_load((path / "config.yaml").read_text()) or {},
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ArtifactError(f"{path}: metadata unreadable ({exc}); the version is incomplete or damaged") from None


def flatten(mapping: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 5}}`` -> ``{"train.epochs": 5}``."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """``(dotted key, old value, new value)`` for every key that differs."""
    a, b = flatten(old), flatten(new)
    missing = object()
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def row(version: Version, previous: Version | None) -> dict:
    """The listing's columns for one version."""
    m, info = version.metrics, version.info
    split = m.split.get("digest") or info.get("split", {}).get("digest") or "-"
    changes = config_diff(previous.config, version.config) if previous else []
    return {
        "version": version.name,
        "created": info.get("created_utc", "-"),
        "data": (info.get("content_digest") or info.get("data_digest") or "-")[:8],
        "split": split[:8],
        "val": m.val.get("accuracy"),
        "test": m.test.get("accuracy"),
        "test_ci": m.test.get("accuracy_ci95"),
        "cv": _get(m.cv, ("head", "mean")),
        "changed": ", ".join(f"{k} {_short(a)}->{_short(b)}" for k, a, b in changes) or ("first" if previous is None else "nothing"),
    }


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def listing_lines(run_dir) -> list[str]:
    """One line per version: digests, accuracies, CV mean and what changed vs the previous version."""
    all_versions = versions(run_dir)
    lines = [f"{'version':8} {'created':20} {'data':8} {'split':8} {'val%':>5} {'test% (95% CI)':>19} {'cv%':>5}  changed"]
    for previous, version in zip([None, *all_versions], all_versions):
        r = row(version, previous)
        ci = f" ({_pct(r['test_ci'][0])}-{_pct(r['test_ci'][1])})" if r["test_ci"] else ""
        lines.append(
            f"{r['version']:8} {r['created']:20} {r['data']:8} {r['split']:8} {_pct(r['val']):>5} "
            f"{_pct(r['test']) + ci:>19} {_pct(r['cv']):>5}  {r['changed']}"
        )
    return lines


# (label, the RunMetrics field, the keys inside it)
METRICS = (("val accuracy", "val", ("accuracy",)), ("test accuracy", "test", ("accuracy",)),
           ("test macro F1", "test", ("macro_f1",)), ("test loss", "test", ("loss",)), ("CV head mean", "cv", ("head", "mean")),
           ("linear probe test", "baseline", ("linear_probe", "test_accuracy")))


def _get(mapping: dict | None, path) -> float | None:
    for key in path:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping


def compare_lines(run_dir, a: str, b: str, html=None) -> list[str]:
    """Metric deltas and the config diff of versions ``a`` and ``b`` (e.g. ``v1``, ``v3``);
    with ``html`` (a file path) also the comparison page with the images whose
    prediction changed (:mod:`vggtl.reports.compare_page`)."""
    by_name = {v.name: v for v in versions(run_dir)}
    for name in (a, b):
        if name not in by_name:
            raise ArtifactError(f"{run_dir}: no version {name!r}; versions here: {', '.join(by_name)}")
    va, vb = by_name[a], by_name[b]
    metric_rows = [(label, _get(getattr(va.metrics, field), path), _get(getattr(vb.metrics, field), path))
                   for label, field, path in METRICS]
    metric_rows = [(label, x, y) for label, x, y in metric_rows if x is not None or y is not None]
    lines = [f"{'metric':20} {a:>9} {b:>9} {'change':>9}"]
    for label, x, y in metric_rows:
        delta = f"{y - x:+.4f}" if x is not None and y is not None else "-"
        lines.append(f"{label:20} {_num(x):>9} {_num(y):>9} {delta:>9}")
    ra, rb = row(va, None), row(vb, None)
    if (ra["data"], ra["split"]) != (rb["data"], rb["split"]):
        lines.append(f"note: different {'data' if ra['data'] != rb['data'] else 'splits'} "
                     f"({ra['data']}/{ra['split']} vs {rb['data']}/{rb['split']}): the held-out numbers are on other images")
    diff = config_diff(va.config, vb.config)
    lines += ["", f"config changes {a} -> {b}:" if diff else f"config: identical in {a} and {b}"]
    lines += [f"  {k}: {json.dumps(x)} -> {json.dumps(y)}" for k, x, y in diff]
    if html is not None:
        from vggtl.reports import compare_page

        lines += ["", f"page: {compare_page.render(va, vb, metric_rows, diff, html)}"]
    return lines


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"

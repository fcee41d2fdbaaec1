"""``vggtl runs NAME --compare vA vB --html FILE``: two versions of a run on
one self-contained page, with the same template and thumbnails as
``report.html``: metric changes, the config diff, and the images whose
prediction became right or wrong between them."""

from __future__ import annotations

from pathlib import Path

from vggtl.files import write_text_atomic
from vggtl.reports.artifact_page import Prediction, read_predictions
from vggtl.reports.thumbs import Thumbnails

CHANGED_MAX = 60  # images per list (fixed / broken), most confident first


def changed_images(a: list[Prediction], b: list[Prediction]) -> dict[str, list[tuple[Prediction, Prediction]]]:
    """Val and test images both versions held out in the same split, whose
    correctness differs: ``fixed`` (wrong in ``a``, right in ``b``) and ``broken``."""
    before = {(p.path, p.split): p for p in a if p.split in ("val", "test")}
    pairs = [(before[(p.path, p.split)], p) for p in b if (p.path, p.split) in before]
    fixed = [(x, y) for x, y in pairs if x.predicted != x.true and y.predicted == y.true]
    broken = [(x, y) for x, y in pairs if x.predicted == x.true and y.predicted != y.true]
    return {"fixed": sorted(fixed, key=lambda pair: -pair[1].confidence)[:CHANGED_MAX],
            "broken": sorted(broken, key=lambda pair: -pair[1].confidence)[:CHANGED_MAX],
            "compared": len(pairs)}


def render(version_a, version_b, metric_rows, diff, out) -> Path:
    """Write the comparison page of two :class:`~vggtl.inspect.runs.Version` to ``out`` (atomically).

    Args:
        metric_rows: ``(label, value in a, value in b)`` per metric.
        diff: ``(dotted key, value in a, value in b)`` per changed config key.
    """
    from vggtl import config
    from vggtl.reports import templates
    from vggtl.training import artifact as artifact_mod

    labels = artifact_mod.read_json(version_b.path / "labels.json")
    same_labels = labels == artifact_mod.read_json(version_a.path / "labels.json")
    both = [version_a.path / "predictions.csv", version_b.path / "predictions.csv"]
    changes = None
    if same_labels and all(p.is_file() for p in both):
        changes = changed_images(read_predictions(both[0], labels), read_predictions(both[1], labels))
        cfg = config.from_dict(version_b.config, f"{version_b.path}/config.yaml")
        thumbs = Thumbnails(cfg.spec.decode, Path(artifact_mod.read_json(version_b.path / "manifest.json")["data_root"]))
        for key in ("fixed", "broken"):
            changes[key] = [_item(x, y, labels, thumbs) for x, y in changes[key]]
        missing = sorted(thumbs.missing.items())
    else:
        missing = []
    html = templates.render("compare.html.j2", title=f"vggtl runs: {version_a.name} vs {version_b.name}", a=version_a,
                            b=version_b, metrics=metric_rows, diff=diff, changes=changes, same_labels=same_labels,
                            missing=missing)
    return write_text_atomic(out, html)


def _item(x: Prediction, y: Prediction, labels, thumbs) -> dict:
    return {"uri": thumbs(y.path), "path": y.path, "true": labels[y.true], "correct": y.predicted == y.true,
            "top": y.top(labels), "before": (labels[x.predicted], x.confidence)}

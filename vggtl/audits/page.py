"""``audit.html``: every flagged image beside examples of its given and
suggested class, duplicate pairs side by side, the off-topic images, the
confused class pairs and the learning curve -- on the report page's template,
figures and thumbnails (:mod:`vggtl.reports`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggtl.audits import curve as curves
from vggtl.files import write_text_atomic
from vggtl.reports import svg, templates
from vggtl.reports.thumbs import Thumbnails

SHOWN = 60  # issues shown with thumbnails (all are in issues.csv)
EXAMPLES = 3  # images of the given and of the suggested class beside each issue
EXAMPLE_MAX_BYTES = 4 << 20  # examples are chosen among files up to 4 MB


def write(path: Path, cfg, fs, rows: list[dict], summary: dict, found) -> Path:
    """Render the page into ``path`` (atomically)."""
    thumbs = Thumbnails(cfg.spec.decode, Path(summary["data_root"]))
    figures = _Figures(fs, found, thumbs)
    shown = rows[:SHOWN]
    thumbs.prefetch([r["path"] for r in shown] + [r["other"] for r in shown if r["other"]]
                    + [p for name in fs.class_names for p in figures.example_paths(name)]
                    + [p for pair in summary["confused_pairs"] for p in pair["examples"]])
    html = templates.render(
        "audit.html.j2", title=f"Data audit: {cfg.name}", summary=summary,
        issues=[figures.issue(row) for row in shown], total=len(rows),
        confused=[{**pair, "items": [figures.item(p) for p in pair["examples"]]} for pair in summary["confused_pairs"]],
        curve=_curve(summary["learning_curve"]), missing=sorted(thumbs.missing.items()),
    )
    return write_text_atomic(path, html)


class _Figures:
    """Figure dicts (the report's ``figure`` macro) of store rows, by path."""

    def __init__(self, fs, found, thumbs):
        self.fs, self.found, self.thumbs = fs, found, thumbs
        self.row_of = {p: i for i, p in enumerate(fs.paths)}
        self.names = list(fs.class_names)

    def item(self, path: str, caption: str = "given", correct: bool = False) -> dict:
        i = self.row_of[path]
        probs = self.found.probabilities[i]
        top = [(self.names[c], float(probs[c])) for c in np.argsort(-probs, kind="stable")[:3]]
        return {"path": path, "uri": self.thumbs(path), "true": self.names[self.fs.labels[i]], "caption": caption,
                "top": top, "correct": correct, "predicted": top[0][0]}

    def example_paths(self, name: str) -> list[str]:
        """The images of class ``name`` the out-of-fold model is surest of (any
        example will do, so none of the huge files whose decoding takes seconds)."""
        cls = self.names.index(name)
        members = np.flatnonzero((self.found.given == cls) & (self.found.predicted == cls))
        ranked = members[np.argsort(-self.found.probabilities[members, cls], kind="stable")]
        return [p for p in (str(self.fs.paths[i]) for i in ranked) if self._small(p)][:EXAMPLES]

    def examples(self, name: str) -> list[dict]:
        return [self.item(path, correct=True) for path in self.example_paths(name)]

    def _small(self, path: str) -> bool:
        try:
            return (self.thumbs.root / path).stat().st_size <= EXAMPLE_MAX_BYTES
        except OSError:
            return False

    def issue(self, row: dict) -> dict:
        shown = {**row, "item": self.item(row["path"]), "given_examples": self.examples(row["given"])}
        shown["other_item"] = self.item(row["other"]) if row["other"] else None
        shown["suggested_examples"] = self.examples(row["suggested"]) if row["suggested"] != row["given"] else []
        return shown


def _curve(learning: dict | None) -> dict | None:
    if not learning:
        return None
    n = learning["images_per_class"]
    chart = svg.line_chart("Cross-validated accuracy against training images per class",
                           [("accuracy (out of fold, mean of folds and repeats)", learning["accuracy"])],
                           "accuracy", y_range=(0, 1), xs=n, x_label="training images per class")
    return {"chart": chart, "verdict": curves.verdict_line(learning["verdict"]), "points": list(zip(n, learning["accuracy"])),
            "classes": {name: curves.verdict_line(fit) for name, fit in learning["class_verdicts"].items()}}

"""The export table: on the console, and one row per export kept in the
artifact (``exports.json``) and shown by both of its reports."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from vggtl.files import write_text_atomic
from vggtl.training import artifact as artifact_mod

BEGIN, END = "<!-- vggtl exports -->", "<!-- /vggtl exports -->"
EXPORTS = "exports.json"
ROW_KEYS = ("format", "quantize", "size_bytes", "test_accuracy", "reference_test_accuracy", "agreement", "max_abs_dprob",
            "unknown_agreement", "images_per_second", "verified", "path", "note")


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_lines(rows) -> list[str]:
    """A markdown table (it reads as plain text too) and the unverified notes;
    ``rows`` are :class:`~vggtl.exports.run.Result` or their ``exports.json`` records."""
    rows = [r if isinstance(r, dict) else asdict(r) for r in rows]
    lines = ["| format | quantize | size (MB) | test acc | reference acc | top-1 agreement | max abs dp | unknown agreement "
             "| images/s | verified | path |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['quantize']} | {r['size_bytes'] / 1e6:.1f} | {_num(r['test_accuracy'])} | "
                     f"{_num(r['reference_test_accuracy'])} | {_num(r['agreement'])} | {_num(r['max_abs_dprob'], 4)} | "
                     f"{_num(r.get('unknown_agreement'))} | "
                     f"{_num(r['images_per_second'], 1)} | {'yes' if r['verified'] else 'NO'} | {r['path']} |")
    lines += [f"{r['format']} {r['quantize']}: {r['note']}" for r in rows if r["note"]]
    return lines


def add_to_artifact(artifact_path, results, model=None) -> None:
    """Add one row per export in ``results`` to the artifact's ``exports.json``
    (earlier rows kept), show them all in ``report.md`` ("Exports") and
    ``report.html``, and reseal those files' checksums, each by atomic replace.

    Args:
        model: the artifact's loaded ``model.keras`` (report.html's Grad-CAM
            overlays), or None to load it.
    """
    path = artifact_mod.resolve(artifact_path)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = _read_rows(path) + [{**{k: asdict(r)[k] for k in ROW_KEYS}, "created_utc": stamp} for r in results]
    write_text_atomic(path / EXPORTS, json.dumps(rows, indent=2) + "\n")
    if (path / "report.md").is_file():
        write_text_atomic(path / "report.md", _with_section((path / "report.md").read_text(encoding="utf-8"), rows))
    if (path / "predictions.csv").is_file():  # artifacts older than report.html have no per-image predictions
        from vggtl.reports import artifact_page

        artifact_page.render(path, model)
    artifact_mod.reseal(path, [EXPORTS, "report.md", "report.html"])


def _read_rows(path: Path) -> list[dict]:
    file = path / EXPORTS
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else []


def _with_section(text: str, rows: list[dict]) -> str:
    """``report.md`` with its Exports section (between the markers) holding ``rows``."""
    if BEGIN in text:
        text = text[: text.index(BEGIN)].rstrip("\n") + "\n" + text[text.index(END) + len(END):].lstrip("\n")
    section = [BEGIN, "## Exports", "", "Each export was run by its own runtime on the test images (`vggtl export`); "
               "one row per export, oldest first.", "", *table_lines(rows), END]
    return text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"


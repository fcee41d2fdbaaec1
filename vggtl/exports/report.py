"""The export table, on the console and as the "Exports" section of the artifact's report."""

from __future__ import annotations

import os
from pathlib import Path

from vggtl.files import sha256_file
from vggtl.training import artifact as artifact_mod

BEGIN, END = "<!-- vggtl exports -->", "<!-- /vggtl exports -->"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_lines(results) -> list[str]:
    """A markdown table (it reads as plain text too) and the unverified notes."""
    lines = ["| format | quantize | size (MB) | test acc | reference acc | top-1 agreement | max abs dp | images/s | verified | path |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.format} | {r.quantize} | {r.size_bytes / 1e6:.1f} | {_num(r.test_accuracy)} | {_num(r.reference_test_accuracy)} | "
                     f"{_num(r.agreement)} | {_num(r.max_abs_dprob, 4)} | {_num(r.images_per_second, 1)} | "
                     f"{'yes' if r.verified else 'NO'} | {r.path} |")
    lines += [f"{r.format} {r.quantize}: {r.note}" for r in results if r.note]
    return lines


def add_to_artifact_report(artifact_path, results) -> None:
    """Put the table into ``report.md`` ("Exports", replacing an earlier one) and
    update its line in ``checksums.sha256``, both by atomic replace, so the
    artifact still verifies."""
    path = artifact_mod.resolve(artifact_path)
    report = path / "report.md"
    if not report.is_file():
        return
    text = report.read_text(encoding="utf-8")
    if BEGIN in text:
        text = text[: text.index(BEGIN)].rstrip("\n") + "\n" + text[text.index(END) + len(END):].lstrip("\n")
    section = [BEGIN, "## Exports", "", "Each export was run by its own runtime on the test images (`vggtl export`).", "",
               *table_lines(results), END]
    _replace_text(report, text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n")
    sums = path / artifact_mod.CHECKSUMS
    lines = [f"{sha256_file(report)}  report.md" if line.endswith("  report.md") else line
             for line in sums.read_text(encoding="utf-8").splitlines()]
    _replace_text(sums, "\n".join(lines) + "\n")


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

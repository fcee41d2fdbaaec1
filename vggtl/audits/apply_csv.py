"""``vggtl audit --apply FILE`` on data listed by ``data.csv``: the CSV is edited, no image moves.

* ``relabel``: the ``label`` cell of the image's row(s) becomes the new class;
* ``exclude``: the image's row(s) leave the list (the file stays where it is);
* ``restore``: puts an excluded row back (what an undo log says: the undo log
  carries each changed line's original text and position).

Only the lines of the rows the user marked change: every other line keeps
its bytes (quoting, spacing, line endings). The undo log is written and
synced before the CSV is replaced in one atomic rename, so the list is
either as it was or fully changed; applying the undo log restores it byte
for byte.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from vggtl.data.scan import relative_path
from vggtl.errors import ConfigError

UNDO_COLUMNS = ("path", "action", "label", "csv_line", "csv_text")


@dataclass(frozen=True)
class Line:
    """One physical line of the CSV holding one record."""

    index: int  # 0-based among the file's lines (0: the header)
    text: str  # with its line ending
    record: list[str]


def apply_to_csv(dataset, csv_path, actions: list[dict], new_undo_log, log) -> tuple[int, Path | None]:
    """Edit ``csv_path`` (``data.csv``) as ``actions`` ask; write the undo log first.

    Args:
        new_undo_log: ``() -> path`` of the undo log to write, called only
            when some row asks for a change.

    Returns:
        ``(images changed, the undo log)``; ``(0, None)`` when no row asked for a change.

    Raises:
        ConfigError: naming the file, line and what is wrong; nothing is changed.
    """
    path = Path(csv_path)
    lines = _lines(path)
    edits, inserts, undo = _plan_edits(dataset, path, lines, actions)
    if not undo:
        return 0, None
    undo_path = new_undo_log()
    _write_undo(undo_path, undo)  # first: an interrupted apply leaves the list unchanged, or changed and undoable
    _replace(path, _edited(lines, edits, inserts))
    for row in undo:
        log(f"  {_said(row)} {row['path']} in {path.name}")
    return len({row["path"] for row in undo}), undo_path


def _plan_edits(dataset, path: Path, lines: list[Line], actions: list[dict]) -> tuple[dict, list, list[dict]]:
    """Check every action against the CSV and plan it: ``(edits, inserts,
    undo rows)``; edits map a line index to its new text ("" removes the
    line), inserts are ``(original index, text)`` of restored lines.

    Raises:
        ConfigError: naming the file, line and what is wrong.
    """
    columns = [name.strip().lower() for name in lines[0].record]
    at_path, at_label = columns.index("path"), columns.index("label")
    root = Path(dataset.root)
    listed = {f.relpath for f in dataset.files}
    lines_of: dict[str, list[Line]] = {}  # each image's lines, as the scan names it (once, not per action)
    for line in lines[1:]:
        if len(line.record) > max(at_path, at_label):  # a row too short for its label: the scan skipped it
            lines_of.setdefault(relative_path(root / line.record[at_path].strip(), root), []).append(line)
    edits, inserts, undo, seen = {}, [], [], set()
    undone = {}  # path -> lines of it an undo log's relabel rows have put back so far
    for act in actions:
        where, rel = f"--apply {act['file']}, line {act['line']}", act["path"]
        key = (rel, act.get("csv_line", ""))  # an undo log lists each line of a path listed twice
        if key in seen:
            raise ConfigError(f"{where}: {rel!r} is listed twice; keep one row per image")
        seen.add(key)
        if act["action"] == "restore":
            inserts.append(_restore(act, where, lines))
            undo.append({"path": rel, "action": "exclude", "label": "", "csv_line": "", "csv_text": ""})
            continue
        if rel not in listed:
            raise ConfigError(f"{where}: {rel!r} is not an image {path} lists; paths are relative to data.root, as "
                              "issues.csv gives them")
        rows = lines_of.get(rel, [])
        if act["action"] == "relabel" and act.get("csv_text"):  # an undo log: the line's own bytes back
            line = rows[min(undone.setdefault(rel, 0), len(rows) - 1)]
            undone[rel] += 1
            edits[line.index] = act["csv_text"]
            undo.append(_undo_row(rel, "relabel", line, line.record[at_label].strip()))
            continue
        for line in rows:
            if act["action"] == "exclude":
                edits[line.index] = ""
                undo.append(_undo_row(rel, "restore", line))
                continue
            if act["label"] not in dataset.class_names:
                raise ConfigError(f"{where}: label {act['label']!r} is not a class; classes: {', '.join(dataset.class_names)}")
            if line.record[at_label].strip() == act["label"]:
                continue
            edits[line.index] = _with_cell(line, at_label, act["label"])
            undo.append(_undo_row(rel, "relabel", line, line.record[at_label].strip()))
    return edits, inserts, undo


def _undo_row(rel: str, action: str, line: Line, label: str = "") -> dict:
    """The undo log's row that puts ``line`` back as it is now (its text and position)."""
    return {"path": rel, "action": action, "label": label, "csv_line": line.index, "csv_text": line.text}


def _lines(path: Path) -> list[Line]:
    """Every line of ``path``, each with the one record it holds (a record spread
    over several lines, a quoted line break, is refused: edit that row by hand)."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"data.csv {path}: cannot be read ({error})") from None
    texts = raw.splitlines(keepends=True)
    lines = []
    for index, text in enumerate(texts):
        records = list(csv.reader(io.StringIO(text.lstrip("\ufeff") if index == 0 else text)))
        if len(records) > 1 or (text.count('"') % 2):
            raise ConfigError(f"data.csv {path}, line {index + 1}: a row spread over several lines; edit it by hand")
        lines.append(Line(index, text, records[0] if records else []))
    return lines


def _with_cell(line: Line, column: int, value: str) -> str:
    """``line`` with one cell replaced, written as csv writes it, with the line's own ending."""
    body = line.text.rstrip("\r\n")
    ending = line.text[len(body):]
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([value if i == column else cell for i, cell in enumerate(line.record)])
    return out.getvalue() + ending


def _restore(act: dict, where: str, lines: list[Line]) -> tuple[int, str]:
    """``(index, text)`` of a line an undo log puts back."""
    text, index = act.get("csv_text") or "", act.get("csv_line") or ""
    if not text or not str(index).isdigit():
        raise ConfigError(f"{where}: restore needs the csv_line and csv_text columns of an undo log (data is listed by "
                          "data.csv: add the row back there by hand)")
    return int(index), text


def _edited(lines: list[Line], edits: dict, inserts: list[tuple[int, str]]) -> str:
    """The file's text with ``edits`` made and the ``inserts`` put back at their original positions."""
    kept = [edits.get(line.index, line.text) for line in lines]
    kept = [text for text in kept if text]
    for index, text in sorted(inserts):  # ascending: each goes back where it was before the later ones
        kept.insert(min(index, len(kept)), text)
    return "".join(kept)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` as ``path``'s bytes in one rename (no newline translation)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(text.encode("utf-8"))
    os.replace(tmp, path)


def _write_undo(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, UNDO_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def _said(row: dict) -> str:
    return {"restore": "excluded", "relabel": f"relabelled (was {row['label']})", "exclude": "restored"}[row["action"]]

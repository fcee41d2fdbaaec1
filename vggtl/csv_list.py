"""A labelled file list (CSV) as a dataset, instead of class folders.

How labelled data usually leaves annotation tools: a CSV with a header row
and the columns ``path,label`` and optionally ``split`` (``train``, ``val`` or
``validation``, ``test``; empty = decided by the split rule). Paths are
relative to ``data.root`` (or absolute). Classes are the sorted distinct labels.

Rows that cannot be used are skipped with a note naming the row, the path and
why (file missing, empty path or label); the run goes on and the notes reach
the console and the report. Rows that make the list ambiguous stop the run
with the row number (the same path listed with two labels or splits, a split
value that is not one of the allowed ones, missing columns).
"""

from __future__ import annotations

import csv
from pathlib import Path

from vggtl.data.dataset import check_class_names
from vggtl.errors import DataError

SPLIT_VALUES = {"train": None, "": None, "val": "val", "validation": "val", "test": "test"}
REQUIRED = ("path", "label")


def read(root: Path, csv_path) -> tuple[list[str], list[tuple[Path, int, str | None]], tuple[bool, bool], list[str]]:
    """The images a CSV lists.

    Args:
        root: ``data.root``; relative paths are resolved against it.
        csv_path: the CSV file (``data.csv``).

    Returns:
        ``(class_names, entries, carve, notes)``: entries are ``(path, label,
        fixed split or None)``; ``carve`` says whether the split rule makes
        the val and test splits (False where the CSV assigns any row to them);
        notes name the skipped rows.

    Raises:
        DataError: unreadable file, missing columns, an unknown split value,
            a path listed twice with different labels or splits, fewer than 2 classes.
    """
    rows, notes = _rows(Path(csv_path)), []
    chosen: dict[str, tuple[int, str, str | None]] = {}  # relpath -> (row number, label, fixed split)
    for number, row in rows:
        relpath, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not relpath or not label:
            notes.append(f"{csv_path} row {number}: skipped, empty {'path' if not relpath else 'label'}")
            continue
        fixed = _split_value(csv_path, number, row)
        if relpath in chosen:
            _check_duplicate(csv_path, number, relpath, chosen[relpath], label, fixed, notes)
            continue
        if not (root / relpath).is_file():
            notes.append(f"{csv_path} row {number}: skipped, {relpath!r} does not exist under {root}")
            continue
        chosen[relpath] = (number, label, fixed)
    class_names = sorted({label for _, label, _ in chosen.values()})
    check_class_names(class_names, f"{csv_path} (column label)")
    if len(class_names) < 2:
        raise DataError(f"{csv_path}: found {len(class_names)} usable label(s) ({', '.join(class_names) or 'none'}); need at least 2")
    label_of = {name: i for i, name in enumerate(class_names)}
    entries = [(root / relpath, label_of[label], fixed) for relpath, (_, label, fixed) in chosen.items()]
    carve = (all(f != "val" for _, _, f in entries), all(f != "test" for _, _, f in entries))
    return class_names, entries, carve, notes


def _rows(path: Path) -> list[tuple[int, dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DataError(
                    f"{path}: the header must name the columns path,label[,split]; missing {', '.join(missing)} "
                    f"(found: {', '.join(header) or 'no header'})"
                )
            reader.fieldnames = header
            return [(number, row) for number, row in enumerate(reader, start=2)]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def _split_value(csv_path, number: int, row: dict) -> str | None:
    value = (row.get("split") or "").strip().lower()
    if value not in SPLIT_VALUES:
        raise DataError(
            f"{csv_path} row {number}: split {row.get('split')!r} is not one of train, val, validation, test "
            "(or empty, to let the split rule decide)"
        )
    return SPLIT_VALUES[value]


def _check_duplicate(csv_path, number: int, relpath: str, first, label: str, fixed, notes: list[str]) -> None:
    first_number, first_label, first_fixed = first
    if (label, fixed) != (first_label, first_fixed):
        raise DataError(
            f"{csv_path} rows {first_number} and {number}: {relpath!r} is listed twice with different "
            f"labels or splits ({first_label!r}/{first_fixed or 'rule'} vs {label!r}/{fixed or 'rule'}); keep one row"
        )
    notes.append(f"{csv_path} row {number}: skipped, {relpath!r} repeats row {first_number}")

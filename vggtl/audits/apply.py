"""``vggtl audit --apply FILE``: relabel or exclude the images a user marked, with an undo log.

FILE is a copy of ``issues.csv`` (or any CSV) with a ``path`` column (as
``issues.csv`` gives it: relative to ``data.root``) and an ``action`` column:

* ``relabel``: move the image into the folder of the class in the ``label``
  column, or, without one, the ``suggested`` column;
* ``exclude``: move it out of the data, to ``<data.root>/.vggtl-excluded/``
  (a hidden folder: no scan sees it);
* ``restore``: move an excluded image back (what an undo log says);
* empty or ``keep``: nothing.

Data listed by ``data.csv`` is changed in that file instead (its rows
relabelled or removed; no image moves): :mod:`vggtl.audits.apply_csv`.

Every row is checked before anything moves (a path that is not an image of
the data, a label that is not a class, a target that exists: exit 2, nothing
changed). Each move is recorded in the undo log as it happens (flushed to
disk), so even an interrupted apply can be undone; applying the undo log
restores the tree byte for byte (files are moved, never rewritten).
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vggtl.audits.apply_csv import apply_to_csv
from vggtl.errors import ConfigError, DataError, invocation
from vggtl.files import make_dir

EXCLUDED = ".vggtl-excluded"
ACTIONS = ("relabel", "exclude", "restore", "keep", "")
UNDO_COLUMNS = ("path", "action", "label")


@dataclass(frozen=True)
class Move:
    """One planned change: ``source`` -> ``target`` (absolute), and its inverse as an undo row."""

    source: Path
    target: Path
    undo: dict
    what: str


def apply(cfg, file, config_arg: str | None = None, log=print) -> Path | None:
    """Carry out the actions of ``file`` on the data tree of ``cfg`` (a validated config);
    ``config_arg`` is how the user named the config (for the undo command printed).

    Returns:
        The undo log written (None when no row asked for a change).

    Raises:
        ConfigError: ``file`` cannot be read or a row is invalid (nothing changed).
        DataError: an image appeared where one was to be moved (the undo log lists what moved).
    """
    from vggtl.plan import scan

    dataset = scan(cfg)
    actions = read_actions(file)
    if dataset.layout == "csv":
        changed, undo = apply_to_csv(dataset, cfg.data.csv, actions, lambda: new_undo_log(cfg), log)
        return _done(file, changed, undo, config_arg, log)
    moves = plan_moves(dataset, actions)
    if not moves:
        return _done(file, 0, None, config_arg, log)
    undo = new_undo_log(cfg)
    with open(undo, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, UNDO_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for move in moves:
            _move(move, Path(dataset.root))
            writer.writerow(move.undo)
            fh.flush()
            os.fsync(fh.fileno())
            log(f"  {move.what}")
    return _done(file, len(moves), undo, config_arg, log)


def new_undo_log(cfg) -> Path:
    """A new undo log's path under ``output.dir``, its folder made: called once
    there is something to undo (a refused or empty --apply makes no folder)."""
    folder = make_dir(Path(cfg.output.dir) / cfg.name / "audit" / "undo", "output.dir")
    return folder / f"undo-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.csv"


def _done(file, changed: int, undo: Path | None, config_arg, log) -> Path | None:
    """Say what was changed and how to undo it; the undo log, or None when nothing changed."""
    if not changed:
        log(f"{file}: no row asks for a change (action column: relabel, exclude or restore)")
        return None
    log(f"changed {changed} image(s); undo: {invocation('audit')} {config_arg or 'CONFIG'} --apply {undo}")
    log("run extract, then train: the new artifact says how many labels changed since the previous version")
    return undo


def read_actions(file) -> list[dict]:
    """The rows of ``file`` that ask for an action (``{"line", "path", "action", "label"}``)."""
    path = Path(file)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"--apply {file}: cannot read it as a CSV file ({error})") from None
    missing = [c for c in ("path", "action") if c not in columns]
    if missing:
        raise ConfigError(f"--apply {file}: no {' or '.join(repr(c) for c in missing)} column (found: {', '.join(columns) or 'none'}); "
                          "use a copy of issues.csv with the action column filled in")
    actions = []
    for line, row in enumerate(rows, start=2):
        action = (row.get("action") or "").strip().lower()
        if action not in ACTIONS:
            raise ConfigError(f"--apply {file}, line {line}: action {row.get('action')!r} is not one of relabel, exclude, "
                              "restore, keep (or empty)")
        if action in ("", "keep"):
            continue
        label = (row.get("label") or "").strip() or (row.get("suggested") or "").strip()
        actions.append({"line": line, "file": str(file), "path": (row.get("path") or "").strip(), "action": action,
                        "label": label, "csv_line": (row.get("csv_line") or "").strip(), "csv_text": row.get("csv_text") or ""})
    return actions


def plan_moves(dataset, actions: list[dict]) -> list[Move]:
    """Check every action against the tree and turn it into a :class:`Move`.

    Raises:
        ConfigError: naming the file, line and what is wrong; nothing is moved.
    """
    root = Path(dataset.root)
    by_path = {f.relpath: f for f in dataset.files}
    seen, moves = set(), []
    for act in actions:
        where = f"--apply {act['file']}, line {act['line']}"
        rel = act["path"]
        if rel in seen:
            raise ConfigError(f"{where}: {rel!r} is listed twice; keep one row per image")
        seen.add(rel)
        if act["action"] == "restore":
            moves.append(_restore(root, rel, where))
            continue
        if rel not in by_path:
            raise ConfigError(f"{where}: {rel!r} is not an image of data.root ({root}); paths are relative to it, "
                              "as issues.csv gives them")
        if act["action"] == "exclude":
            moves.append(Move(root / rel, root / EXCLUDED / rel, {"path": rel, "action": "restore", "label": ""},
                              f"excluded {rel} (moved to {EXCLUDED}/)"))
            continue
        moves.append(_relabel(dataset, by_path[rel], act["label"], where))
    targets = [m.target for m in moves if m.target is not None]
    if len(set(targets)) != len(targets):
        raise ConfigError(f"--apply {actions[0]['file']}: two rows would move images to the same path; rename one first")
    return [m for m in moves if m.target is not None]


def _relabel(dataset, image, label: str, where: str) -> Move:
    names = dataset.class_names
    if label not in names:
        raise ConfigError(f"{where}: label {label!r} is not a class; classes: {', '.join(names)}")
    old = names[image.label]
    parts = list(PurePosixPath(image.relpath).parts)
    at = 1 if dataset.layout == "pre-split" else 0
    if parts[at] != old:
        raise ConfigError(f"{where}: {image.relpath!r} is not directly in its class folder {old!r}; move it by hand")
    if label == old:
        return Move(Path(), None, {}, "")  # already that class: nothing to do
    parts[at] = label
    new = "/".join(parts)
    target = Path(dataset.root) / new
    if target.exists():
        raise ConfigError(f"{where}: cannot relabel {image.relpath!r} as {label!r}: {new!r} exists already; "
                          "rename one of them first")
    return Move(Path(dataset.root) / image.relpath, target, {"path": new, "action": "relabel", "label": old},
                f"relabelled {image.relpath} -> {new}")


def _restore(root: Path, rel: str, where: str) -> Move:
    source, target = root / EXCLUDED / rel, root / rel
    if not source.is_file():
        raise ConfigError(f"{where}: nothing to restore: {source} does not exist")
    if target.exists():
        raise ConfigError(f"{where}: cannot restore {rel!r}: it exists already in data.root")
    return Move(source, target, {"path": rel, "action": "exclude", "label": ""}, f"restored {rel}")


def _move(move: Move, root: Path) -> None:
    move.target.parent.mkdir(parents=True, exist_ok=True)
    if move.target.exists():  # checked when planning; refuse to overwrite if it appeared since
        raise DataError(f"{move.target} appeared while applying; stopped before overwriting it (the undo log lists "
                        "what was already moved)")
    os.rename(move.source, move.target)
    _prune_empty(move.source.parent, root / EXCLUDED)


def _prune_empty(folder: Path, excluded: Path) -> None:
    """Remove folders under (and including) ``.vggtl-excluded`` that a restore emptied."""
    while folder == excluded or excluded in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == excluded:
            return
        folder = folder.parent

"""``predict ARTIFACT DIR --out FILE.csv``: a folder of any size into one CSV,
streamed, resumable.

Images are read, classified and written batch by batch (memory is bounded by
one batch), in the sorted order of the inputs, and every batch is flushed
and fsync'ed before the next one starts. The batches are fixed slices of
that order, so a run killed at any moment (kill -9 included) and started
again keeps the complete batches already written, truncates a partly written
one, and computes every later batch exactly as an uninterrupted run would:
the finished file is the same, byte for byte. A side file
``FILE.csv.run.json`` records what the CSV is of (artifact, inputs, batch
size, top-k); a CSV of another artifact or other inputs is refused unless
``--overwrite``. Files that cannot be decoded get a row with their reason.

``--out FILE.parquet`` (``pip install 'vggtl[parquet]'``): the same rows,
typed (floats as float64, ``unknown`` as bool, empty cells as nulls). A
Parquet file cannot be appended to, so the rows stream into the resumable
journal ``FILE.parquet.partial.csv`` exactly as above, which is converted
in one atomic step when complete (and then removed): a kill at any moment
and a rerun give the same Parquet bytes as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from vggtl.data import UndecodableImage
from vggtl.errors import VggtlError, path_error
from vggtl.files import write_text_atomic

BATCH = 32


def columns(labels, threshold: float | None = None) -> list[str]:
    """The CSV header; with an unknown ``threshold``: ``unknown`` and ``unknown_score`` too."""
    scored = ["unknown", "unknown_score"] if threshold is not None else []
    return ["path", "predicted", "confidence", *(f"p_{label}" for label in labels), *scored, "error"]


def run_record(art, paths) -> dict:
    digest = hashlib.sha256("\n".join(map(str, paths)).encode("utf-8")).hexdigest()
    return {"artifact_model_sha256": art.checksums.get("model.keras"), "labels": list(art.labels),
            "inputs": len(paths), "inputs_sha256": digest, "batch": BATCH}


def in_process(rows_of):
    """The local engine: ``slices -> each slice's rows, in order``, computed here by
    ``rows_of(paths) -> rows`` (:func:`batch_rows` with the artifact's predictor)."""
    return lambda slices: (rows_of(paths) for paths in slices)


def predict_to_csv(art, paths, out, compute, overwrite: bool = False, progress=None) -> dict:
    """Classify ``paths`` into the CSV ``out``, resuming an interrupted run of the same job.

    Args:
        art: the loaded artifact (labels, model digest).
        paths: image files, in the order the rows are written.
        out: the CSV path; its folder must exist and be writable.
        compute: ``slices -> rows of each slice, in order``: the engine
            (:func:`in_process`, or Ray actors: :mod:`vggtl.inspect.ray_batch`),
            each slice's rows made by :func:`batch_rows`.
        overwrite: start over even when ``out`` holds another job's rows.
        progress: callable ``n`` called with the rows kept from an earlier run,
            then after each batch with its size; or None.

    Returns:
        ``{"rows", "resumed", "errors"}``: rows in the file, rows kept from an
        earlier run, and how many files could not be decoded (over the whole file).

    Raises:
        VggtlError: ``out`` holds another job's rows (without ``overwrite``).
        PathError: ``out`` cannot be written.
    """
    out = Path(out)
    record = run_record(art, paths)
    done = _resume_point(out, record, overwrite)
    threshold = art.unknown["threshold"] if art.unknown else None
    header = columns(art.labels, threshold)
    try:
        _write_side(out, record)
        with open(out, "r+" if done else "w", newline="", encoding="utf-8") as fh:
            if done:
                fh.seek(done["offset"])
                fh.truncate()
            else:
                fh.write(_line(header))
            if progress and done:
                progress(done["rows"])
            slices = [paths[start : start + BATCH] for start in range(done["rows"] if done else 0, len(paths), BATCH)]
            for rows in compute(slices):
                fh.write("".join(_line(row) for row in rows))
                fh.flush()
                os.fsync(fh.fileno())
                if progress:
                    progress(len(rows))
    except OSError as exc:
        raise path_error(exc, out, "write the predictions file") from None
    errors = _count_errors(out)
    return {"rows": len(paths), "resumed": done["rows"] if done else 0, "errors": errors}


def batch_rows(paths, decode, predictor, labels, threshold: float | None = None) -> list[list]:
    """One row per path, in order; a file that cannot be decoded (or vanished) gets its reason.

    ``decode``: ``path -> (S, S, 3) uint8`` as in extraction; ``predictor``:
    uint8 batch -> probabilities, or with an unknown ``threshold``
    ``(probabilities, unknown scores)``: each row then says ``unknown``
    true/false and the score."""
    images, errors = [], {}
    for i, path in enumerate(paths):
        try:
            images.append(decode(path))
        except (UndecodableImage, OSError) as exc:
            errors[i] = str(exc) or type(exc).__name__
    out = predictor(np.stack(images)) if images else (np.zeros((0, len(labels))), np.zeros(0))
    probs, scores = out if isinstance(out, tuple) else (out, None)
    probs, scores = iter(np.asarray(probs, np.float64)), iter(scores if scores is not None else ())
    blank = [""] * (2 if threshold is not None else 0)
    rows = []
    for i, path in enumerate(paths):
        if i in errors:
            rows.append([str(path), "", "", *([""] * len(labels)), *blank, errors[i]])
            continue
        p = next(probs)
        best = int(np.argmax(p))
        scored = []
        if threshold is not None:
            score = float(next(scores))
            scored = ["true" if score > threshold else "false", f"{score:.6f}"]
        rows.append([str(path), labels[best], f"{p[best]:.6f}", *(f"{v:.6f}" for v in p), *scored, ""])
    return rows


def _line(row) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def _resume_point(out: Path, record: dict, overwrite: bool) -> dict | None:
    """Where to go on in ``out``: ``{"rows": complete batches' rows, "offset": bytes}``, or None to start afresh."""
    if overwrite or not out.exists():
        return None
    _refuse_other_job(out, record)
    lines = out.read_bytes().split(b"\n")[:-1]  # a last line without its newline was cut by the kill
    rows = max(0, len(lines) - 1)
    # a partly written batch is computed again, whole (a finished file is kept as it is)
    kept = rows if rows == record["inputs"] else (rows // BATCH) * BATCH
    offset = sum(len(line) + 1 for line in lines[: kept + 1]) if lines else 0
    return {"rows": kept, "offset": offset} if lines else None


def _refuse_other_job(out: Path, record: dict) -> None:
    """Raise unless ``out``'s side file says it holds this job's rows (``record``)."""
    try:
        previous = json.loads(_side(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous != record:
        raise VggtlError(f"{out} already holds predictions of another artifact or other inputs ({_side(out).name} differs "
                         "or is missing); choose another --out, or pass --overwrite to replace it")


def _side(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _write_side(out: Path, record: dict) -> None:
    write_text_atomic(_side(out), json.dumps(record, indent=1))


def _count_errors(out: Path) -> int:
    with open(out, newline="", encoding="utf-8") as fh:
        return sum(1 for row in csv.DictReader(fh) if row["error"])


PARQUET_EXTRA = "parquet"


def predict_to_parquet(art, paths, out, compute, overwrite: bool = False, progress=None) -> dict:
    """:func:`predict_to_csv` into a Parquet file ``out``: the rows stream into a
    resumable CSV journal beside it, converted atomically when complete.

    Raises:
        MissingExtra: pyarrow is not installed.
        VggtlError / PathError: as :func:`predict_to_csv`.
    """
    from vggtl.errors import require_extra

    require_extra("pyarrow.parquet", PARQUET_EXTRA, "--out FILE.parquet")
    out = Path(out)
    record = run_record(art, paths)
    journal = out.with_name(out.name + ".partial.csv")
    if out.exists() and not overwrite and not journal.exists():
        _refuse_other_job(out, record)
        if progress:
            progress(len(paths))
        return {"rows": len(paths), "resumed": len(paths), "errors": _count_errors_parquet(out)}
    result = predict_to_csv(art, paths, journal, compute, overwrite, progress)
    try:
        _csv_to_parquet(journal, out, art.labels)
        _write_side(out, record)
    except OSError as exc:
        raise path_error(exc, out, "write the predictions file") from None
    journal.unlink()
    _side(journal).unlink(missing_ok=True)
    return result


def _csv_to_parquet(journal: Path, out: Path, labels) -> None:
    """The journal's rows as a typed Parquet table, written to a temporary file then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(journal, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0]) if rows else columns(labels)
    typed = {"unknown": (pa.bool_(), lambda v: v == "true"), "path": (pa.string(), str), "predicted": (pa.string(), str),
             "error": (pa.string(), str)}
    arrays = {}
    for name in header:
        kind, convert = typed.get(name, (pa.float64(), float))
        arrays[name] = pa.array([convert(r[name]) if r[name] != "" else None for r in rows], type=kind)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(pa.table(arrays), staging, compression="zstd")
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)


def _count_errors_parquet(out: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_table(out, columns=["error"]).column("error").drop_null().length())

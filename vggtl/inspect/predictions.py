"""Predictions on image files: the per-image loop shared by ``predict`` and
``classify``, their shared view options (Grad-CAM, tiles), and predictions
from an artifact (the Python API ``vggtl.predict.predict_paths``).

Images are decoded exactly as during extraction (EXIF orientation, alpha over
the run's background, resize policy), with the settings recorded in the
artifact's ``config.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from vggtl import config, data
from vggtl.backbones.build import batch_predictor
from vggtl.data import iter_probabilities
from vggtl.errors import VggtlError, require_extra
from vggtl.files import check_writable
from vggtl.training import artifact as artifact_mod


def expand_inputs(inputs, extensions) -> list[Path]:
    """Files as given, and every image file under each directory (sorted).

    A missing file among others stays in the list: it is reported as skipped
    ("cannot read file: No such file or directory") and the others are still
    predicted (exit 1, as for an undecodable file); when nothing given exists,
    VggtlError (a usage error) names the first.
    """
    paths, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = data.list_images(path, extensions)
            if not found:
                raise VggtlError(f"directory {item!r} contains no image ({', '.join(extensions)})")
            paths.extend(found)
        else:
            paths.append(path)
            if not path.exists():
                missing.append(item)
    if missing and len(missing) == len(paths):
        raise VggtlError(f"input {missing[0]!r} does not exist")
    return paths


def print_image_predictions(paths, decode, predict_fn, top, print_result, as_json: bool, explain=None) -> int:
    """The per-image loop of ``predict`` and ``classify``: decode, predict,
    optionally explain with Grad-CAM, print one result per image.

    Args:
        paths, decode, predict_fn: as for :func:`iter_probabilities`.
        top: callable ``probs -> top entries`` put in each result.
        print_result: callable ``(result, as_json)`` printing one result.
        as_json: print undecodable files as JSON lines too.
        explain: None, or callable ``{"path", "image", "probs"} -> dict``
            stored as the result's ``"gradcam"``; it may raise
            :class:`vggtl.data.UndecodableImage` (the full-size decode for the
            overlay can fail where the reduced one did not).

    Returns:
        Number of images that failed (not decodable, or no Grad-CAM).
    """
    failures = 0
    for result in iter_probabilities(paths, decode, predict_fn):
        if "error" in result:
            failures += 1
            print(f"{result['path']}: skipped: {result['error']}", file=sys.stderr)
            if as_json:
                print(json.dumps(result))
            continue
        out = {"path": result["path"], "top": top(result["probs"])}
        if "unknown_score" in result:  # judged against the threshold by print_result
            out["unknown_score"] = result["unknown_score"]
        if explain is not None:
            try:
                out["gradcam"] = explain(result)
            except data.UndecodableImage as exc:
                failures += 1
                print(f"{result['path']}: no grad-cam: {exc}", file=sys.stderr)
        print_result(out, as_json)
    return failures


def artifact_config(art: artifact_mod.Artifact) -> config.Config:
    """The run config recorded in an artifact (its ``spec`` decodes images as training did)."""
    return config.from_dict(art.config, f"{art.path}/config.yaml")


def top_labels(probs, labels, k: int) -> list[tuple[str, float]]:
    """``(label, probability)`` of the ``k`` most probable classes, best first."""
    return [(labels[i], round(float(probs[i]), 6)) for i in np.argsort(-probs, kind="stable")[:k]]


def artifact_predictor(art: artifact_mod.Artifact, model=None, warn=None, with_unknown: bool = False):
    """uint8 images ``(n, S, S, 3)`` -> probabilities, as the artifact was evaluated
    (with ``with_unknown`` and an artifact that has unknown detection:
    ``(probabilities, unknown scores)`` from the same pass).

    An artifact whose features came from OpenVINO or ONNX Runtime
    (``extract.runtime``) runs the converted base it carries and its
    ``head.keras`` when that runtime is installed; otherwise ``model.keras``
    (``model`` if given) runs, after one note through ``warn`` (default:
    stderr) saying why. A TensorFlow-trained artifact runs ``model.keras``
    converted once to ONNX Runtime or OpenVINO when installed (no TensorFlow
    import: :mod:`vggtl.inspect.converted`), else ``model.keras``.
    """
    from vggtl.inspect import converted
    from vggtl.training import features_runtime

    warn = warn or (lambda line: print(line, file=sys.stderr))
    scored = with_unknown and art.unknown is not None
    record = art.features_runtime
    if record is not None:
        reason = features_runtime.missing_runtime(record)
        if reason is None:
            head = None  # head.keras through Keras, unless its base's runtime can run it too
            if converted.can_convert(record["runtime"]) and not converted.keras_forced():
                head = converted.predictor(art, record["runtime"], warn, record["head"])
            return features_runtime.load_predictor(art.path, record, artifact_mod.load_keras, head, with_unknown=scored)
        warn(features_runtime.fallback_note(record, reason))
    elif model is None:  # (a loaded model means Grad-CAM: Keras' gradients are needed anyway)
        runtime, note = converted.chosen_runtime()
        if runtime is not None:
            run = converted.predictor(art, runtime, warn)
            return run if scored or art.unknown is None else (lambda batch: run(batch)[0])
        if note and sys.stderr.isatty():  # said at a terminal, not into every log and pipe
            warn(note)
    if scored:
        return batch_predictor(art.load_model(with_unknown=True))
    return batch_predictor(model or art.load_model())


def unknown_fields(result: dict, threshold: float | None) -> dict:
    """``{"unknown": bool, "unknown_score": float}`` of one predicted image
    (None and None when the artifact has no unknown detection)."""
    if threshold is None or "unknown_score" not in result:
        return {"unknown": None, "unknown_score": None}
    score = result["unknown_score"]
    return {"unknown": bool(score > threshold), "unknown_score": round(float(score), 6)}


def unknown_threshold(art: artifact_mod.Artifact, warn=None) -> float | None:
    """The artifact's unknown threshold; for one without, None after one note saying why and what to do."""
    record = art.unknown
    if record is not None:
        return float(record["threshold"])
    why = (art.metrics.get("unknown") or {}).get("reason") or "it was trained by a vggtl without unknown detection"
    (warn or (lambda line: print(line, file=sys.stderr)))(
        f"note: {art.path} cannot say 'unknown' ({why}); retrain it with this vggtl (predict.unknown.keep set) to get it")
    return None


def predict_paths(art, paths, top_k: int = 3, model=None):
    """Classify image files with an artifact; one result per path, in order.

    Args:
        art: an :class:`~vggtl.training.artifact.Artifact` (e.g. what
            ``vggtl.train.run`` returns) or an artifact directory
            (``experiments/demo/latest``, checksums verified first).
        paths: image files.
        top_k: labels per image.
        model: the artifact's loaded ``model.keras``, to reuse across calls
            (used when the artifact's features came from TensorFlow, or its
            runtime is not installed; see :func:`artifact_predictor`).

    Yields:
        ``{"path", "top": [(label, probability), ...], "unknown", "unknown_score"}``
        (``unknown``: True when the image looks like none of the classes; the
        score is higher the further out of scope; both None for an artifact
        without unknown detection) or ``{"path", "error"}`` for a file that
        cannot be decoded (with the reason).
    """
    if not isinstance(art, artifact_mod.Artifact):
        art = artifact_mod.load(art)
    decode = artifact_config(art).spec.decode.decode
    k = min(top_k, len(art.labels))
    threshold = unknown_threshold(art)
    for result in iter_probabilities(list(paths), decode, artifact_predictor(art, model, with_unknown=True)):
        if "error" in result:
            yield result
        else:
            yield {"path": result["path"], "top": top_labels(result["probs"], art.labels, k),
                   **unknown_fields(result, threshold)}


# --------------------------------------------------------------------------- options shared with classify


def add_view_arguments(parser, class_help: str, class_metavar: str = "NAME") -> None:
    """``--gradcam DIR``, ``--class``, ``--tiles RxC`` and ``--overlap F`` (predict and classify)."""
    parser.add_argument("--gradcam", metavar="OUT_DIR", help="write <stem>_gradcam.jpg (overlay) and .npy (heatmap) per image")
    parser.add_argument("--class", dest="class_name", metavar=class_metavar, help=class_help)
    parser.add_argument("--tiles", metavar="RxC", help="classify an R x C grid of crops of each image, e.g. 2x2")
    parser.add_argument("--overlap", metavar="F", help="with --tiles: fraction of a tile shared with each neighbour, in [0, 0.9) (default 0)")


def check_view_arguments(args) -> tuple[tuple[int, int] | None, float]:
    """Validate the combination of view options; return ``(grid or None, overlap)``."""
    from vggtl.inspect import tiles

    if args.top_k < 1:
        raise VggtlError(f"--top-k must be >= 1, got {args.top_k}")
    if args.class_name is not None and args.gradcam is None:
        raise VggtlError("--class chooses the class Grad-CAM explains; use it together with --gradcam OUT_DIR")
    if args.overlap is not None and args.tiles is None:
        raise VggtlError("--overlap only applies to tiled predictions; add --tiles RxC (e.g. --tiles 2x2)")
    if args.gradcam is not None and args.tiles is not None:
        raise VggtlError("--gradcam and --tiles cannot be combined; run them as two commands")
    grid = tiles.parse_grid(args.tiles) if args.tiles is not None else None
    overlap = tiles.check_overlap(args.overlap) if args.overlap is not None else 0.0
    return grid, overlap


def resolve_label(name: str, labels) -> int:
    """Index of ``name`` in the artifact's ``labels``; VggtlError listing them otherwise."""
    if name in labels:
        return labels.index(name)
    raise VggtlError(f"--class {name!r} is not a class of this artifact; choose one of: {', '.join(labels)}")


# --------------------------------------------------------------------------- the predict command's work


def _result_printer(threshold: float | None):
    """``print_result`` of ``predict``: each line with ``unknown`` judged against the artifact's ``threshold``."""
    return lambda result, as_json: _print_result({**result, **unknown_fields(result, threshold)}, as_json)


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        record = {"path": result["path"], "top": [{"label": l, "probability": p} for l, p in result["top"]],
                  "unknown": result.get("unknown"), "unknown_score": result.get("unknown_score")}
        if "gradcam" in result:
            record["gradcam"] = result["gradcam"]
        print(json.dumps(record))
        return
    top = "  ".join(f"{label} {p:.3f}" for label, p in result["top"])
    if result.get("unknown"):
        label, p = result["top"][0]
        top = f"unknown (closest: {label} {p:.2f}; score {result['unknown_score']:.2f})"
    print(f"{result['path']}\t{top}")
    if "gradcam" in result:
        g = result["gradcam"]
        print(f"  grad-cam of {g['class']!r} at {g['layer']}: {g['jpg']}")


def _explainer(art, cfg, model, args):
    """``--gradcam``: result -> Grad-CAM files of the chosen (or predicted) class."""
    from vggtl.inspect import gradcam

    chosen = resolve_label(args.class_name, art.labels) if args.class_name is not None else None
    layer, stems = gradcam.default_layer(model, cfg.spec.arch.gradcam_layer), set()
    explainer = gradcam.FileExplainer(model, args.gradcam, cfg.spec.decode, conv_layer=layer)

    def explain(result):
        target = chosen if chosen is not None else int(np.argmax(result["probs"]))
        written = explainer.explain(result["path"], result["image"], target, gradcam.unique_stem(result["path"], stems))
        return {"class": art.labels[target], **written}

    return explain


def _run_images(art, cfg, predictor, model, paths, args) -> int:
    k = min(args.top_k, len(art.labels))
    explain = _explainer(art, cfg, model, args) if args.gradcam is not None else None
    return print_image_predictions(
        paths, cfg.spec.decode.decode, predictor, lambda p: top_labels(p, art.labels, k),
        _result_printer(unknown_threshold(art)), args.json, explain,
    )


def _run_tiles(art, cfg, predictor, paths, args, grid, overlap) -> int:
    from vggtl.inspect import tiles

    labels = tiles.TileLabels(art.labels, lambda i, p: {"label": art.labels[i], "probability": p}, min(args.top_k, len(art.labels)))
    return tiles.print_tiled_predictions(paths, tiles.TileGrid(*grid, overlap), predictor, cfg.spec.decode, labels, args.json)


def print_predictions(artifact_path, inputs, args) -> int:
    """The ``predict`` command after argument parsing: classify ``inputs`` (files and
    directories) with the artifact at ``artifact_path`` and print the results.

    Args:
        artifact_path: version directory, ``.../latest`` or the run directory.
        inputs: image files and/or directories.
        args: the parsed options (``top_k``, ``json``, ``gradcam``,
            ``class_name``, ``tiles``, ``overlap``).

    Returns:
        How many inputs failed (undecodable, or no Grad-CAM).
    """
    grid, overlap = check_view_arguments(args)
    if getattr(args, "out", None) is not None:
        return _predict_to_file(artifact_path, inputs, args)
    if getattr(args, "engine", "local") != "local":
        raise VggtlError(f"--engine {args.engine} computes the batches of --out FILE.csv|FILE.parquet; add --out")
    art = artifact_mod.load(artifact_path)
    if args.class_name is not None:
        resolve_label(args.class_name, art.labels)  # refuse a bad name before loading the model
    cfg = artifact_config(art)
    paths = expand_inputs(inputs, cfg.data.extensions)
    model = art.load_model() if args.gradcam is not None else None  # Grad-CAM needs Keras' gradients
    predictor = artifact_predictor(art, model, with_unknown=grid is None)
    if grid is not None:
        return _run_tiles(art, cfg, predictor, paths, args, grid, overlap)
    return _run_images(art, cfg, predictor, model, paths, args)


def batch_rows_of(art, warn=None):
    """``paths -> rows`` of ``--out`` for ``art``: decoded as in extraction,
    predicted as ``predict`` predicts (what every engine runs per slice)."""
    from vggtl.inspect import batch

    decode = artifact_config(art).spec.decode.decode
    predictor = artifact_predictor(art, with_unknown=True, warn=warn)
    threshold = art.unknown["threshold"] if art.unknown else None
    return lambda paths: batch.batch_rows(paths, decode, predictor, art.labels, threshold)


def _batch_engine(art, args):
    """``--engine``: the ``slices -> rows`` of this process or of Ray actors (a context manager)."""
    import contextlib

    from vggtl.inspect import batch

    if args.engine == "local":
        if args.ray_address is not None:
            raise VggtlError("--ray-address needs --engine ray")
        return contextlib.nullcontext(batch.in_process(batch_rows_of(art)))
    from vggtl.inspect import ray_batch

    require_extra("ray", "ray", "predict --engine ray")
    # The actors find batch_rows_of by name (a module function): ray_batch imports nothing of predict's.
    return ray_batch.engine(art.path, batch_rows_of, args.workers, args.ray_address,
                            log=lambda line: print(line, file=sys.stderr))


def _predict_to_file(artifact_path, inputs, args) -> int:
    """``--out FILE.csv|FILE.parquet``: every input into one file, streamed and resumable (:mod:`vggtl.inspect.batch`)."""
    from tqdm import tqdm

    from vggtl.inspect import batch

    out = Path(args.out)
    writers = {".csv": batch.predict_to_csv, ".parquet": batch.predict_to_parquet}
    if out.suffix.lower() not in writers:
        raise VggtlError(f"--out {args.out}: .csv or .parquet is written (one row per image); name the file *.csv or *.parquet")
    if args.gradcam is not None or args.tiles is not None or args.json:
        raise VggtlError("--out writes one row per image; it does not combine with --gradcam, --tiles or --json")
    if out.suffix.lower() == ".parquet":
        require_extra("pyarrow.parquet", batch.PARQUET_EXTRA, "--out FILE.parquet")
    if not out.parent.is_dir():
        raise VggtlError(f"--out {args.out}: folder {str(out.parent)!r} does not exist; create it first")
    check_writable(out.parent, "--out")  # before the model is loaded, not after
    art = artifact_mod.load(artifact_path)
    cfg = artifact_config(art)
    paths = sorted(expand_inputs(inputs, cfg.data.extensions), key=str)
    unknown_threshold(art)  # the note, for an artifact without detection
    with _batch_engine(art, args) as compute, tqdm(total=len(paths), unit="image", disable=None, file=sys.stderr) as bar:
        result = writers[out.suffix.lower()](art, paths, out, compute, args.overwrite, bar.update)
    kept = result["resumed"]
    print((f"{out} is already complete: {kept} row(s), nothing computed" if kept == result["rows"] else
           f"wrote {result['rows']} row(s) to {out}" + (f" ({kept} kept from an interrupted run)" if kept else ""))
          + (f"; {result['errors']} file(s) could not be decoded (reason in the error column)" if result["errors"] else ""))
    return 1 if result["errors"] else 0

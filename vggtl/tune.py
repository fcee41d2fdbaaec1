"""python -m vggtl.tune [CONFIG] [--trials N]: search head and training settings on cached features.

Each trial trains the head as vggtl train does, on stratified folds of train +
val (tune.folds), and is scored by its cross-validated accuracy (ties: lower
log loss); the test split is never read while searching. The space is
tune.space in the config (head.* and train.* keys; defaults in docs/commands.md).
Trials run in parallel processes (tune.jobs) with a seeded Optuna TPE
sampler: the same config, data and seed give the same trials table.

Writes <output.dir>/<name>/tune/v<N>/: trials.csv, trials.md, trials.png,
tune.json and best.yaml, a config vggtl train accepts as it is. Prints the
default's and the best trial's cross-validated accuracy, and each one's test
accuracy (trained once after the search, for the report only).

Needs the optional extra: pip install 'vggtl[tune]'.
Python API: vggtl.tune.tune(cfg, trials) -> Study (see vggtl.training.tune).
"""

from __future__ import annotations

import sys

from vggtl import cli, tfquiet
from vggtl.errors import cli_entry
from vggtl.training.tune import tune
from vggtl.training.tune_report import summary_lines

__all__ = ["main", "tune"]


@cli_entry
def main(argv=None) -> int:
    parser = cli.parser("vggtl tune", __doc__)
    cli.add_config_arguments(parser, config_required=False)
    cli.add_shortcut(parser, "--trials", "tune.trials", "N", "number of trials")
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    with tfquiet.filtered_stderr():  # the workers' TensorFlow notices; the progress bar still shows
        study = tune(cfg, config_arg=args.config)
    print("\n".join(summary_lines(study, args.config)))
    print(f"{study.path}  (best.yaml: vggtl train {study.path / 'best.yaml'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

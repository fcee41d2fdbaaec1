"""python -m vggtl.summary CONFIG_OR_ARTIFACT [--diagram OUT.png]: a model's layers.

Prints the layers of a model -- nested models expanded -- with output shapes,
parameter counts and whether they train, plus totals:

  * an artifact directory (experiments/demo/latest): its model.keras, after
    the checksums are verified;
  * a config file (configs/demo.yaml): the model train would build, i.e. the
    frozen feature model plus the head, with random backbone weights (shapes
    and counts do not depend on them, so no weights are needed) and as many
    outputs as data.root has class folders (2 when it does not exist).

--diagram OUT.png (or .svg, .pdf) also draws the graph with
keras.utils.plot_model, which needs the pydot package and Graphviz.

Exit status: 0; 1 when the diagram could not be drawn (the table is still
printed); 2 on a usage error.
"""

from __future__ import annotations

import sys

from vggtl import cli, tfquiet
from vggtl.errors import cli_entry
from vggtl.inspect.layer_table import print_summary


@cli_entry
@tfquiet.quiet
def main(argv=None) -> int:
    parser = cli.parser("vggtl summary", __doc__)
    parser.add_argument("target", metavar="CONFIG_OR_ARTIFACT", help="artifact directory or YAML config file")
    parser.add_argument("--diagram", metavar="OUT.png", help="also draw the model graph (needs pydot and Graphviz)")
    args = parser.parse_args(argv)
    return 0 if print_summary(args.target, args.diagram) else 1


if __name__ == "__main__":
    sys.exit(main())

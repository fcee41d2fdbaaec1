"""python -m vggtl.classify IMAGE_OR_DIR ... [--model vgg16|vgg19]: ImageNet labels for photos.

Classifies photos into the 1000 ImageNet classes with the full pretrained
network (keras.applications.VGG16/VGG19 with include_top=True): no training,
no artifact. Images are decoded like everywhere in vggtl (EXIF orientation,
alpha over white, stretch to 224x224) and preprocessed with Keras'
preprocess_input; labels come from the class index shipped in the package.
--gradcam DIR and --tiles RxC work as for vggtl predict.

Weights (the include_top files, ~550 MB) resolve in order: --weights PATH;
Keras' cache $KERAS_HOME/models/<file> (~/.keras when unset); Keras'
download. Without any, the command fails with the remedies.

Exit status: 0 when every image was classified, 1 when some could not be
read, 2 on a usage error (including missing weights).
"""

from __future__ import annotations

import sys

from vggtl import cli
from vggtl.errors import cli_entry
from vggtl.inspect.imagenet import MODELS, print_classifications
from vggtl.inspect.predictions import add_view_arguments


@cli_entry
def main(argv=None) -> int:
    parser = cli.parser("vggtl classify", __doc__)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories")
    parser.add_argument("--model", default="vgg16", choices=sorted(MODELS), help="network (default vgg16)")
    parser.add_argument("--weights", metavar="PATH", help="include_top weights file (default: Keras' cache, else download)")
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (JSON lines)")
    add_view_arguments(
        parser, "with --gradcam: explain this ImageNet class (label such as coffee_mug, or wnid) instead of the predicted one",
        class_metavar="NAME_OR_WNID",
    )
    args = parser.parse_args(argv)
    return 1 if print_classifications(args.inputs, args) else 0


if __name__ == "__main__":
    sys.exit(main())

"""vggtl: transfer learning from a frozen ImageNet VGG16 on small labeled image folders.

(VGG19, ResNet50, Inception V3 and MobileNetV2 bases too: ``architectures``.)

The package is split into one module per pipeline stage (``config``, ``data``,
``augment``, ``architectures``, ``backbone``, ``weights``, ``store``, ``extract``, ``heads``,
``train``, ``artifact``, ``report``, ``predict``) and per tool (``classify``,
``gradcam``, ``tiles``, ``summary``, ``scratch``); each command-line entry point is a
``main(argv=None)`` run by ``python -m vggtl.<module>`` or the ``vggtl``
console script.

Importing the package is cheap on purpose: TensorFlow is imported only by the
stages that run a network, so a warm ``extract`` on unchanged data never pays
for it.
"""

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (CPU feature notes, "no CUDA driver") is
# noise for users of a CPU tool; errors still show. Users can override it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

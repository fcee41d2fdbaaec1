"""vggtl: transfer learning from a frozen ImageNet VGG16 on small labeled image folders.

(VGG19, ResNet50, Inception V3 and MobileNetV2 bases too: ``backbones.registry``.)

Layout, one folder per question:

* ground floor: ``errors``, ``files``, ``tfquiet``, ``data`` (scan, split,
  decode), ``config`` (schema, overrides, the resolved ``cfg.spec``), ``cli``;
* ``backbones/``: the registry of networks, the resolved spec, model building,
  the preprocessing layer, Keras weight files, VGG16's offline weights;
* ``features/``: the HDF5 feature store (its whole format), the extraction
  pipeline, augmented views;
* ``plan``: a config resolved once into a run plan (scanned data, weights,
  the store's location); ``RunPlan.split`` is the one place a split is made;
* ``training/``: heads, fitting, metrics, baselines, the run, artifacts, reports;
* ``inspect/``: predictions, Grad-CAM, tiles, ImageNet classification, layer tables;
* commands (``extract``, ``train``, ``predict``, ``classify``, ``summary``,
  ``weights``): parse arguments, make one library call, print; each is a
  ``main(argv=None)`` run by ``python -m vggtl.<command>`` or the ``vggtl``
  console script, and ``extract.run``, ``train.run`` and
  ``predict.predict_paths`` are the Python API.

Importing the package is cheap on purpose: TensorFlow is imported only by the
stages that run a network, so a warm ``extract`` on unchanged data never pays
for it.
"""

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (CPU feature notes, "no CUDA driver") is
# noise for users of a CPU tool; errors still show. Users can override it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

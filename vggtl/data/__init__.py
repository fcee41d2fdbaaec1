"""The data side of vggtl: scan a labeled image tree, hold it as a
:class:`Dataset`, decode its images robustly, classify them in batches.

- :mod:`vggtl.data.scan` -- the layouts under ``data.root`` (class folders,
  ``train/ val/ test/`` folders, a CSV list), hashing, the dataset's warnings;
- :mod:`vggtl.data.dataset` -- :class:`ImageFile`, :class:`Dataset` (its
  splits by :mod:`vggtl.splits`, its digests);
- :mod:`vggtl.data.decode` -- :class:`DecodeSettings` and :func:`decode_image`:
  EXIF, modes, transparency, the ``data.resize`` policies, the pixel guard;
- :mod:`vggtl.data.batches` -- decode and classify in batches;
- :mod:`vggtl.data.thumbnails` -- thumbnails of the model's input, made by
  extraction and cached by content, for the pages that show images.

The names below are the package's API; import them from ``vggtl.data``.
"""

from vggtl.data.batches import evenly_spaced, iter_probabilities
from vggtl.data.dataset import SPLIT_ALIASES, SPLIT_CODES, SPLITS, Dataset, ImageFile
from vggtl.data.decode import (
    DEFAULT_MAX_PIXELS, LARGE_IMAGE_PIXELS, PADDED_POLICIES, RESIZE_POLICIES, WHITE, DecodeSettings, UndecodableImage,
    composited, content_box, decode_image, finish_image, model_box, opened_image, pad_window, source_box,
    to_basic_mode, too_many_pixels_reason,
)
from vggtl.data.scan import (
    IMAGE_EXTENSIONS, SMALL_CLASS_WARNING, detect_layout, file_sha256, list_images, scan, visible_subdirs,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "LARGE_IMAGE_PIXELS", "PADDED_POLICIES", "RESIZE_POLICIES",
    "SMALL_CLASS_WARNING", "SPLITS", "SPLIT_ALIASES", "SPLIT_CODES", "WHITE", "Dataset", "DecodeSettings", "ImageFile",
    "UndecodableImage", "composited", "content_box", "decode_image", "detect_layout", "evenly_spaced", "file_sha256",
    "finish_image", "iter_probabilities", "list_images", "model_box", "opened_image", "pad_window", "scan",
    "source_box", "to_basic_mode", "too_many_pixels_reason", "visible_subdirs",
]

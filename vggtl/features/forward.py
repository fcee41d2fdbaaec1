"""The frozen forward pass and the per-image decoding, as both extraction
engines run them: this process (``extract.engine: local``, :mod:`pipeline`)
and each Ray actor (``ray``, :mod:`ray_engine`)."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from pathlib import Path

from vggtl import config, data
from vggtl.backbones.resolve import ResolvedWeights
from vggtl.data import thumbnails
from vggtl.errors import DataError
from vggtl.features import augment, runtimes, store


@dataclass(frozen=True)
class Job:
    """One image file and the store keys still to compute for it: its clean
    features (key = content hash) and/or augmented views (view keys)."""

    file: data.ImageFile
    keys: tuple[str, ...]


# The TensorFlow forward functions of the last few bases this process
# extracted with: extracting again with the same base (a notebook re-running
# extract after adding images, tune after extract, the test suite) skips
# building the network and tracing its function (~0.7 s for VGG16 at 32 px;
# the function never changes the model, which nothing else holds).
_FORWARDS: collections.OrderedDict = collections.OrderedDict()
FORWARDS_KEPT = 2


def forward_key(cfg: config.Config, weights: ResolvedWeights) -> tuple:
    """What a TensorFlow forward function depends on: the resolved backbone
    (architecture, layers, size, mirror averaging...) and the weights' digest
    (of the file's tensors, or ``random-init:seed=<seed>``: the seed matters
    only to random weights, and is in their digest)."""
    return repr(cfg.spec), weights.digest


def forget_forwards() -> None:
    """Drop the kept forward functions (and the models they hold)."""
    _FORWARDS.clear()


def make_forward(cfg: config.Config, weights: ResolvedWeights, log=print, calibration=None):
    """A compiled function: uint8 images -> {layer: features} for every stored layer
    (one pass through the base, however many layers are kept), run by
    ``extract.runtime``. Imports TensorFlow (and the runtime). TensorFlow's
    is kept for the process (:data:`FORWARDS_KEPT` bases, the last used)."""
    if cfg.extract.runtime != "tensorflow":
        return runtimes.make_forward(cfg, weights, cfg.extract.runtime, log, calibration)
    key = forward_key(cfg, weights)
    if key not in _FORWARDS:
        _FORWARDS[key] = tensorflow_forward(cfg, weights)
        while len(_FORWARDS) > FORWARDS_KEPT:
            _FORWARDS.popitem(last=False)
    _FORWARDS.move_to_end(key)
    return _FORWARDS[key]


def tensorflow_forward(cfg: config.Config, weights: ResolvedWeights):
    """:func:`make_forward` on TensorFlow: the feature model of ``cfg.spec``, traced once."""
    from vggtl import tfquiet
    from vggtl.backbones import build

    tf = tfquiet.load()
    layers = list(cfg.spec.stored_layers)
    model = build.feature_model(cfg.spec, weights, layers, cfg.seed)
    size = cfg.spec.image_size
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8)

    def forward(x):
        outputs = model(x, training=False)
        return dict(zip(layers, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    return tf.function(forward, input_signature=[spec])


def read_as_scanned(file) -> bytes:
    """The bytes of ``file`` (one read: they are hashed and decoded from memory)."""
    try:
        return Path(file.path).read_bytes()
    except OSError as exc:
        raise data.UndecodableImage(f"cannot read file: {exc.strerror}") from None


def check_unchanged(file, content: bytes) -> None:
    """The bytes about to be decoded are the ones the scan hashed: features are
    stored under that hash, so an image edited while extraction runs must not be
    stored under its old one.

    Raises:
        DataError: naming the file; a rerun keeps the work done so far.
    """
    if hashlib.sha256(content).hexdigest() != file.sha256:
        raise DataError(f"{file.path} changed while extract was running (its content is no longer what was scanned); "
                        "run extract again when the data is settled: the features computed so far are kept")


def job_decoder(cfg: config.Config):
    """``(job, content=None)`` -> [(key, pixels)]: the file (or its ``content``,
    bytes read elsewhere) is decoded once, views are warped from it."""
    decode = cfg.spec.decode

    def decode_job(job: Job, content: bytes | None = None):
        content = read_as_scanned(job.file) if content is None else content
        check_unchanged(job.file, content)
        clean = decode.decode(content)
        thumbnails.remember(job.file.sha256, decode, clean)  # the pages then never decode this file again
        items = []
        for key in job.keys:
            if key == job.file.sha256:
                items.append((key, clean))
            else:
                rng = augment.view_rng(cfg.seed, job.file.sha256, store.view_index(key))
                items.append((key, augment.augment_image(clean, cfg.augment, rng, decode.background)))
        return items

    return decode_job

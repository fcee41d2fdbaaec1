"""ImageNet classification with the full pretrained VGG16/VGG19 (``include_top=True``).

No training, no artifact: ``keras.applications.VGG16/VGG19(include_top=True)``
with its ImageNet weights. Each image is decoded like everywhere in vggtl
(EXIF orientation, alpha over white, bilinear stretch to 224x224),
preprocessed with ``keras.applications.vgg16/vgg19.preprocess_input`` and
decoded into ``(wnid, label, probability)`` with the class index shipped in
the package (``vggtl/imagenet_class_index.json``; Keras downloads its copy at
run time, which fails offline).

Weights (the include_top files, ~550 MB, are not the notop files the rest of
vggtl uses) resolve in order: an explicit file; Keras' cache
``$KERAS_HOME/models/<file>`` (``~/.keras`` when unset); Keras' download
from its usual host. Without any, a WeightsError lists the remedies.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from vggtl import data, tfquiet
from vggtl.backbones import keras_files
from vggtl.backbones.build import predict_eagerly
from vggtl.backbones.registry import KERAS_WEIGHTS_URL
from vggtl.errors import VggtlError, WeightsError
from vggtl.inspect.predictions import (
    check_view_arguments,
    expand_inputs,
    print_image_predictions,
)

CLASS_INDEX_FILE = "imagenet_class_index.json"
# md5 that keras.applications.imagenet_utils.decode_predictions pins for its
# download of the same file: the shipped copy is byte-identical to Keras'.
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"
N_CLASSES = 1000
# Decoded like everywhere in vggtl: 224x224 stretch, alpha over white.
DECODE = data.DecodeSettings(224)


@dataclass(frozen=True)
class ModelSpec:
    """One ImageNet classifier Keras ships.

    Attributes:
        name: ``'vgg16'`` or ``'vgg19'``.
        filename: weights file name in Keras' cache (``$KERAS_HOME/models``).
        url: where Keras downloads it from.
        md5: the file hash Keras checks after downloading.
    """

    name: str
    filename: str
    url: str
    md5: str

    @property
    def cached_path(self) -> Path:
        """Where Keras keeps these weights: ``$KERAS_HOME/models/<file>`` (``~/.keras`` when unset)."""
        return keras_files.keras_cache_path(self.filename)


# File names, URLs and hashes exactly as keras/src/applications/vgg16.py and vgg19.py.
MODELS = {
    "vgg16": ModelSpec(
        "vgg16",
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        KERAS_WEIGHTS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "64373286793e3c8b2b4e3219cbf3544b",
    ),
    "vgg19": ModelSpec(
        "vgg19",
        "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        KERAS_WEIGHTS_URL + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        "cbe5617147190e668d6c5d5026f83318",
    ),
}


# --------------------------------------------------------------------------- class index


@functools.cache
def class_index() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet classes as ``(wnid, label)`` in output order.

    Read from ``vggtl/imagenet_class_index.json`` (Keras' format:
    ``{"0": ["n01440764", "tench"], ...}``) and checked: exactly 1000
    entries, keys 0..999, unique wnids.
    """
    raw = resources.files("vggtl").joinpath(CLASS_INDEX_FILE).read_bytes()
    mapping = json.loads(raw)
    if sorted(mapping, key=int) != [str(i) for i in range(N_CLASSES)]:
        raise VggtlError(f"vggtl/{CLASS_INDEX_FILE} must map '0'..'999'; the installed package is damaged, reinstall vggtl")
    entries = tuple((mapping[str(i)][0], mapping[str(i)][1]) for i in range(N_CLASSES))
    if len({wnid for wnid, _ in entries}) != N_CLASSES:
        raise VggtlError(f"vggtl/{CLASS_INDEX_FILE} has duplicate wnids; the installed package is damaged, reinstall vggtl")
    return entries


def class_index_md5() -> str:
    """md5 of the shipped class index file (compare with :data:`CLASS_INDEX_MD5`)."""
    return hashlib.md5(resources.files("vggtl").joinpath(CLASS_INDEX_FILE).read_bytes()).hexdigest()


def resolve_class(text: str) -> int:
    """Output index of a class given as a wnid (``n03063599``) or a label (``coffee_mug``).

    Labels match case-insensitively, with spaces for underscores. Two labels
    name two classes each (``crane``: bird and machine; ``maillot``): those
    need the wnid.

    Raises:
        VggtlError: unknown or ambiguous, with close matches or the wnids to use.
    """
    entries = class_index()
    for i, (wnid, _) in enumerate(entries):
        if text == wnid:
            return i
    key = text.strip().lower().replace(" ", "_")
    hits = [i for i, (_, label) in enumerate(entries) if label.lower() == key]
    if len(hits) == 1:
        return hits[0]
    if hits:
        options = ", ".join(f"{entries[i][0]} (index {i})" for i in hits)
        raise VggtlError(f"--class {text!r} names {len(hits)} ImageNet classes; pass the wnid of the one you mean: {options}")
    close = difflib.get_close_matches(key, [label.lower() for _, label in entries], n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise VggtlError(
        f"--class {text!r} is neither an ImageNet label nor a wnid (e.g. 'coffee_mug' or 'n03063599').{hint} "
        f"All 1000 are listed in vggtl/{CLASS_INDEX_FILE}"
    )


def decode_predictions(probs, top_k: int) -> list[tuple[str, str, float]]:
    """``(wnid, label, probability)`` of the ``top_k`` most probable classes, best first.

    Args:
        probs: ``(1000,)`` probabilities of one image.
        top_k: number of classes, in ``[1, 1000]``.
    """
    probs = np.asarray(probs)
    if probs.shape != (N_CLASSES,):
        raise ValueError(f"probs must have shape ({N_CLASSES},), got {probs.shape}")
    entries = class_index()
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [(entries[i][0], entries[i][1], round(float(probs[i]), 6)) for i in order]


# --------------------------------------------------------------------------- weights


def _missing_weights_message(spec: ModelSpec, reason: str) -> str:
    return (
        f"no ImageNet {spec.name.upper()} classifier weights (include_top) available ({reason}). Remedies, any one of:\n"
        f"  1. run this command once with internet access: Keras downloads {spec.filename} (~550 MB) to {spec.cached_path}\n"
        f"  2. pass a copy you have: --weights /path/to/{spec.filename}\n"
        f"  3. put the file at {spec.cached_path} (downloaded elsewhere from {spec.url})"
    )


def classifier_weights(model: str, weights=None, download: bool = True) -> Path:
    """The include_top weights file for ``model``.

    Args:
        model: ``'vgg16'`` or ``'vgg19'``.
        weights: explicit file (``--weights``); must exist.
        download: try Keras' download when nothing local is found.

    Returns:
        Path of an existing weights file.

    Raises:
        WeightsError: ``weights`` missing, or nothing found and the download
            failed or was not allowed; the message lists the remedies.
    """
    if model not in MODELS:
        raise VggtlError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    spec = MODELS[model]
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"--weights {str(weights)!r} does not exist; pass the path of {spec.filename}")
        return path
    try:
        return keras_files.keras_cached_or_download(spec.filename, spec.url, spec.md5, download)[0]
    except WeightsError as exc:
        raise WeightsError(_missing_weights_message(spec, str(exc))) from None


# --------------------------------------------------------------------------- model


def build_classifier(model: str, weights_path):
    """The full ImageNet classifier with the weights in ``weights_path`` loaded.

    Args:
        model: ``'vgg16'`` or ``'vgg19'``.
        weights_path: an include_top weights file (Keras ``.h5`` or
            ``.weights.h5``).

    Raises:
        WeightsError: the file does not fit the model (e.g. a notop file).
    """
    tfquiet.load()
    import keras

    builder = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[model]
    net = builder(include_top=True, weights=None)
    keras_files.load_into(
        net, weights_path, f"{model.upper()}(include_top=True)",
        f"it must be the full classifier's weights ({MODELS[model].filename}), not the notop file",
    )
    return net


def preprocess_function(model: str):
    """``keras.applications.<model>.preprocess_input`` (caffe mode for both VGGs)."""
    import keras

    return {"vgg16": keras.applications.vgg16.preprocess_input, "vgg19": keras.applications.vgg19.preprocess_input}[model]


# --------------------------------------------------------------------------- the classify command's work


def _entry(wnid: str, label: str, p: float) -> dict:
    return {"wnid": wnid, "label": label, "probability": p}


def _print_result(out: dict, as_json: bool) -> None:
    if as_json:
        record = {"path": out["path"], "top": [_entry(*t) for t in out["top"]]}
        if "gradcam" in out:
            record["gradcam"] = out["gradcam"]
        print(json.dumps(record))
        return
    top = "  ".join(f"{label} ({wnid}) {p:.3f}" for wnid, label, p in out["top"])
    print(f"{out['path']}\t{top}")
    if "gradcam" in out:
        g = out["gradcam"]
        print(f"  grad-cam of {g['label']!r} ({g['wnid']}) at {g['layer']}: {g['jpg']}")


def _explainer(model, preprocess, args):
    """``--gradcam``: result -> Grad-CAM files of the chosen (or predicted) ImageNet class."""
    from vggtl.inspect import gradcam

    chosen, stems = resolve_class(args.class_name) if args.class_name is not None else None, set()
    explainer = gradcam.FileExplainer(model, args.gradcam, DECODE, preprocess=preprocess)

    def explain(result):
        target = chosen if chosen is not None else int(np.argmax(result["probs"]))
        written = explainer.explain(result["path"], result["image"], target, gradcam.unique_stem(result["path"], stems))
        wnid, label = class_index()[target]
        return {"wnid": wnid, "label": label, **written}

    return explain


def _run_images(model, preprocess, image_size, paths, args) -> int:
    decode = DECODE.at_size(image_size).decode

    def predict_fn(batch):
        return predict_eagerly(model, preprocess(batch.astype("float32")))

    return print_image_predictions(
        paths, decode, predict_fn, lambda p: decode_predictions(p, args.top_k), _print_result, args.json,
        _explainer(model, preprocess, args) if args.gradcam is not None else None,
    )


def _run_tiles(model, preprocess, image_size, paths, args, grid, overlap) -> int:
    from vggtl.inspect import tiles

    labels = tiles.TileLabels([label for _, label in class_index()], lambda i, p: _entry(*class_index()[i], p), args.top_k)
    return tiles.print_tiled_predictions(
        paths, tiles.TileGrid(*grid, overlap), lambda batch: predict_eagerly(model, preprocess(batch.astype("float32"))),
        DECODE.at_size(image_size), labels, args.json,
    )


def _input_size(model) -> int:
    height, width = model.input_shape[1:3]
    if height is None or height != width:
        raise VggtlError(f"model {model.name!r} must take square images of a fixed size, got {model.input_shape}")
    return int(height)


def print_classifications(inputs, args) -> int:
    """The ``classify`` command after argument parsing: classify ``inputs`` (files
    and directories) into the ImageNet classes and print the results.

    Args:
        inputs: image files and/or directories.
        args: the parsed options (``model``, ``weights``, ``top_k``, ``json``,
            ``gradcam``, ``class_name``, ``tiles``, ``overlap``).

    Returns:
        How many inputs failed (undecodable, or no Grad-CAM).
    """
    grid, overlap = check_view_arguments(args)
    if args.top_k > N_CLASSES:
        raise VggtlError(f"--top-k must be <= {N_CLASSES}, got {args.top_k}")
    if args.class_name is not None:
        resolve_class(args.class_name)  # refuse a bad name before loading ~550 MB
    paths = expand_inputs(inputs, data.IMAGE_EXTENSIONS)
    # Outside filtered_stderr: a download shows its progress live.
    weights = classifier_weights(args.model, args.weights)
    with tfquiet.filtered_stderr():
        model = build_classifier(args.model, weights)
        if model.output_shape[-1] != N_CLASSES:
            raise VggtlError(f"model {model.name!r} has {model.output_shape[-1]} outputs; ImageNet classification needs {N_CLASSES}")
        preprocess = preprocess_function(args.model)
        size = _input_size(model)
        if grid is not None:
            return _run_tiles(model, preprocess, size, paths, args, grid, overlap)
        return _run_images(model, preprocess, size, paths, args)

"""``python -m vggtl.classify IMAGE_OR_DIR ... [--model vgg16|vgg19] [--weights PATH] [--top-k 5] [--json]``.

Classify photos into the 1000 ImageNet classes with the full pretrained
network (``keras.applications.VGG16/VGG19(include_top=True)``): no training,
no artifact. Each image is decoded like everywhere in vggtl (EXIF
orientation, alpha over white, bilinear stretch to 224x224), preprocessed
with ``keras.applications.vgg16/vgg19.preprocess_input`` and decoded into
``(wnid, label, probability)`` with the class index shipped in the package
(``vggtl/imagenet_class_index.json``; Keras downloads its copy at run time,
which fails offline). ``--gradcam DIR`` and ``--tiles RxC`` work as for
``vggtl.predict``.

Weights (the include_top files, ~550 MB, are not the notop files the rest of
vggtl uses) resolve in order: ``--weights PATH``; Keras' cache
``$KERAS_HOME/models/<file>`` (``~/.keras`` when unset); Keras' download
from its usual host. Without any, the command fails with the remedies.
Exit status: 0 when every image was classified, 1 when some could not be
read, 2 on a usage error (including missing weights).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from vggtl import config, data, tfquiet
from vggtl import weights as weights_mod
from vggtl.backbones.registry import KERAS_WEIGHTS_URL
from vggtl.errors import VggtlError, WeightsError, cli_entry
from vggtl.predict import add_view_arguments, check_view_arguments, expand_inputs, print_image_predictions

CLASS_INDEX_FILE = "imagenet_class_index.json"
# md5 that keras.applications.imagenet_utils.decode_predictions pins for its
# download of the same file: the shipped copy is byte-identical to Keras'.
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"
N_CLASSES = 1000
BACKGROUND = (255, 255, 255)


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


def keras_cache_path(spec: ModelSpec) -> Path:
    """Where Keras keeps ``spec``'s weights: ``$KERAS_HOME/models/<file>`` (``~/.keras`` when unset)."""
    return weights_mod.keras_cache_path(spec.filename)


def _missing_weights_message(spec: ModelSpec, reason: str) -> str:
    return (
        f"no ImageNet {spec.name.upper()} classifier weights (include_top) available ({reason}). Remedies, any one of:\n"
        f"  1. run this command once with internet access: Keras downloads {spec.filename} (~550 MB) to {keras_cache_path(spec)}\n"
        f"  2. pass a copy you have: --weights /path/to/{spec.filename}\n"
        f"  3. put the file at {keras_cache_path(spec)} (downloaded elsewhere from {spec.url})"
    )


def resolve_weights(model: str, weights=None, download: bool = True) -> Path:
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
        return weights_mod.keras_cached_or_download(spec.filename, spec.url, spec.md5, download)[0]
    except WeightsError as exc:
        raise WeightsError(_missing_weights_message(spec, str(exc))) from None


# --------------------------------------------------------------------------- model


def build_model(model: str, weights_path):
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
    weights_mod.load_into(
        net, weights_path, f"{model.upper()}(include_top=True)",
        f"it must be the full classifier's weights ({MODELS[model].filename}), not the notop file",
    )
    return net


def preprocess_function(model: str):
    """``keras.applications.<model>.preprocess_input`` (caffe mode for both VGGs)."""
    import keras

    return {"vgg16": keras.applications.vgg16.preprocess_input, "vgg19": keras.applications.vgg19.preprocess_input}[model]


# --------------------------------------------------------------------------- command


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

    def explain(result):
        target = chosen if chosen is not None else int(np.argmax(result["probs"]))
        written = gradcam.explain_file(
            model, result["path"], result["image"], target, args.gradcam,
            gradcam.unique_stem(result["path"], stems), preprocess=preprocess,
            background=BACKGROUND, max_pixels=config.DEFAULT_MAX_PIXELS,
        )
        wnid, label = class_index()[target]
        return {"wnid": wnid, "label": label, **written}

    return explain


def _run_images(model, preprocess, image_size, paths, args) -> int:
    def decode(path):
        return data.decode_image(path, image_size, "stretch", BACKGROUND, config.DEFAULT_MAX_PIXELS)

    def predict_fn(batch):
        return model.predict(preprocess(batch.astype("float32")), verbose=0)

    return print_image_predictions(
        paths, decode, predict_fn, lambda p: decode_predictions(p, args.top_k), _print_result, args.json,
        _explainer(model, preprocess, args) if args.gradcam is not None else None,
    )


def _run_tiles(model, preprocess, image_size, paths, args, grid, overlap) -> int:
    from vggtl.inspect import tiles

    return tiles.print_tiled_predictions(
        paths, grid, overlap, lambda batch: model.predict(preprocess(batch.astype("float32")), verbose=0),
        {"image_size": image_size, "resize": "stretch", "background": BACKGROUND, "max_pixels": config.DEFAULT_MAX_PIXELS},
        [label for _, label in class_index()], lambda i, p: _entry(*class_index()[i], p), args.top_k, args.json,
    )


def _input_size(model) -> int:
    height, width = model.input_shape[1:3]
    if height is None or height != width:
        raise VggtlError(f"model {model.name!r} must take square images of a fixed size, got {model.input_shape}")
    return int(height)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vggtl classify", description=__doc__.splitlines()[0])
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
    grid, overlap = check_view_arguments(args)
    if args.top_k > N_CLASSES:
        raise VggtlError(f"--top-k must be <= {N_CLASSES}, got {args.top_k}")
    if args.class_name is not None:
        resolve_class(args.class_name)  # refuse a bad name before loading ~550 MB
    paths = expand_inputs(args.inputs, config.IMAGE_EXTENSIONS)
    # Outside filtered_stderr: a download shows its progress live.
    weights = resolve_weights(args.model, args.weights)
    with tfquiet.filtered_stderr():
        model = build_model(args.model, weights)
        if model.output_shape[-1] != N_CLASSES:
            raise VggtlError(f"model {model.name!r} has {model.output_shape[-1]} outputs; ImageNet classification needs {N_CLASSES}")
        preprocess = preprocess_function(args.model)
        size = _input_size(model)
        if grid is not None:
            failures = _run_tiles(model, preprocess, size, paths, args, grid, overlap)
        else:
            failures = _run_images(model, preprocess, size, paths, args)
    return 1 if failures else 0


main = cli_entry(main)

if __name__ == "__main__":
    sys.exit(main())

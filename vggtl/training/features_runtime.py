"""The runtime that computed a run's features, carried by its artifact.

A head trained on OpenVINO or ONNX Runtime features (``extract.runtime``,
int8 above all) scores what its report says only when it sees those
features again. So such an artifact carries, beside the end-to-end
``model.keras`` (TensorFlow fp32 base; runs wherever Keras does):

    base/        the converted (int8: quantized) base that extraction ran,
                 copied from the runtime cache (outputs out0, out1, ... =
                 the stored layers)
    head.keras   the final model on that base's features: the head (with
                 fine-tuning: the tuned top blocks and the head); with unknown
                 detection it also takes the base's channel statistics and
                 returns the unknown score beside the probabilities
                 (:func:`vggtl.backbones.build.scored_head`)

``info.json["features_runtime"]`` records both. ``predict`` runs them when
the runtime is installed, and ``model.keras`` otherwise, saying so once; the
report gives the test accuracy both ways.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from vggtl.features import runtimes

BASE_DIR = "base"
HEAD_FILE = "head.keras"


def is_converted(cfg) -> bool:
    """Extraction ran a converted base (not TensorFlow): the artifact carries it."""
    return cfg.extract.runtime != "tensorflow"


def write(staging: Path, cfg, where, head_model, inputs: list[str], log=print) -> dict:
    """Copy the converted base of ``cfg`` into ``staging/base/`` and save
    ``head_model`` as ``head.keras``: the final model on the stored layers
    ``inputs`` (the final layer's features, then with unknown detection the
    channel statistics). Returns the ``features_runtime`` record for info.json."""
    runtime = cfg.extract.runtime
    source = runtimes.converted_model(cfg, where.weights, runtime, log, where.calibration)
    target = staging / BASE_DIR
    target.mkdir()
    for path in sorted(source.parent.iterdir()):
        if path.name != "sha256.json":  # the artifact's checksums cover the copies
            shutil.copy2(path, target / path.name)
    head_model.save(staging / HEAD_FILE)
    return {
        "runtime": runtime,
        "precision": cfg.extract.precision,
        "calibration": where.format.settings.get("calibration"),
        "model": f"{BASE_DIR}/{source.name}",
        "layers": list(cfg.spec.stored_layers),
        "layer": inputs[0],
        "inputs": list(inputs),
        "head": HEAD_FILE,
    }


def head_inputs(record: dict) -> dict[str, str]:
    """``{head.keras input name: stored layer}``; one input (the features) for
    a head without the unknown score (and for artifacts older than it)."""
    from vggtl.backbones.build import FEATURES_INPUT

    layers = record.get("inputs", [record["layer"]])
    return dict(zip((FEATURES_INPUT, *layers[1:]), layers))


def describe(record: dict) -> str:
    """``openvino int8``."""
    return f"{record['runtime']} {record['precision']}"


def load_predictor(path: Path, record: dict, load_keras, head=None, with_unknown: bool = False):
    """uint8 images -> probabilities through the artifact's converted base and
    ``head.keras`` (``path``: the artifact directory; ``load_keras(file)``
    loads a Keras file of it), or ``head`` (its inputs -> its outputs: the head
    converted to the base's runtime, :mod:`vggtl.inspect.converted`).

    With ``with_unknown`` and a head that scores out-of-scope images:
    ``images -> (probabilities, unknown scores)``, from the same pass.
    """
    from vggtl.backbones.build import batch_predictor

    forward = runtimes.load_forward(path / record["model"], record["runtime"], record["layers"])
    inputs = head_inputs(record)
    if head is None:
        head = batch_predictor(load_keras(path / record["head"]))

    def run(images):
        outs = forward(images)
        feeds = {name: outs[layer] for name, layer in inputs.items()}
        result = head(feeds if len(feeds) > 1 else next(iter(feeds.values())))
        return result if with_unknown or not isinstance(result, tuple) else result[0]

    return run


def missing_runtime(record: dict) -> str | None:
    """Why ``record``'s runtime cannot run here (not installed), or None.
    Only the runtime itself is needed to run a converted model, not its converter."""
    runtime = record["runtime"]
    if importlib.util.find_spec(runtime) is None:
        return f"{runtime} is not installed (pip install 'vggtl[{runtimes.CONVERTED[runtime].extra}]')"
    return None


def fallback_note(record: dict, reason: str) -> str:
    return (f"note: this model's head was trained on {describe(record)} features, but {reason}; the base runs in "
            "TensorFlow fp32 (model.keras) instead, so probabilities can differ slightly from the evaluated ones")


def compare_with_tensorflow(tf_probs: np.ndarray, runtime_probs: np.ndarray, y_true: np.ndarray) -> dict:
    """The test split through ``model.keras`` (TensorFlow fp32) beside the
    recorded runtime's probabilities: accuracy with its interval, top-1
    agreement, largest probability difference."""
    from vggtl.training.metrics import wilson_interval

    correct = int(np.sum(tf_probs.argmax(1) == y_true))
    agreement = float(np.mean(tf_probs.argmax(1) == runtime_probs.argmax(1))) if len(y_true) else 1.0
    return {
        "test_accuracy": correct / max(len(y_true), 1),
        "accuracy_ci95": list(wilson_interval(correct, len(y_true))),
        "n": int(len(y_true)),
        "top1_agreement": agreement,
        "max_abs_diff": float(np.max(np.abs(tf_probs - runtime_probs))) if len(y_true) else 0.0,
    }

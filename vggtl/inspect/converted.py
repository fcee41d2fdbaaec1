"""``predict`` without TensorFlow: an artifact's ``model.keras`` converted once
to a lighter runtime, cached on this machine, verified against the original.

Importing TensorFlow costs ~6 CPU-seconds, nearly all of a one-image
``predict``. When the runtime :data:`PREFERRED` names is installed (with its
converter), the first ``predict`` of an artifact converts ``model.keras``
(frozen SavedModel -> ONNX by tf2onnx, or OpenVINO IR) into
``$VGGTL_CACHE_DIR/predict/<runtime>-<sha256 of model.keras>/``, checks that
it gives the same top label and probabilities within :data:`TOLERANCE` on
probe images, and keeps it; later ``predict`` runs load only that runtime.
The key is the model's digest, which ``artifact.load`` has just verified, so
a retrained or altered model never meets a stale conversion. Decoding and
preprocessing are unchanged: the converted model contains the same
preprocessing layers and takes the same uint8 RGB images.

An artifact trained on ``extract.runtime`` features runs the base it
carries; its ``head.keras`` is converted the same way to that base's
runtime, so that path skips TensorFlow too.

``VGGTL_PREDICT_RUNTIME`` forces one: ``tensorflow`` (the Keras files as
before), ``onnxruntime`` or ``openvino``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from vggtl.backbones.build import PROBABILITIES, UNKNOWN_SCORE, predict_eagerly
from vggtl.errors import VggtlError

# Measured for a one-image predict (scripts/bench_predict.py, docs/benchmarks.md).
PREFERRED = ("onnxruntime", "openvino")
NEEDS = {"onnxruntime": (("onnxruntime", "tf2onnx", "onnx"), "onnx"), "openvino": (("openvino",), "openvino")}
FILENAME = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
# fp32 in both: the conversion changes the order of float additions only.
TOLERANCE = 1e-3
# Relative to max(1, |score|): the score is in units of the validation spread,
# and probe images score far out of scope (hundreds), where float32 sums differ more.
SCORE_TOLERANCE = 1e-2
PROBES = 8
ENV = "VGGTL_PREDICT_RUNTIME"


def keras_forced() -> bool:
    """``VGGTL_PREDICT_RUNTIME=tensorflow``: run the Keras files, convert nothing."""
    return os.environ.get(ENV, "").strip().lower() == "tensorflow"


def chosen_runtime() -> tuple[str | None, str | None]:
    """``(runtime, None)`` for the runtime predict should use, or ``(None, why
    not)``: forced to TensorFlow, or no converted runtime installed (the note
    names the extra that would make predict skip TensorFlow)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced and forced not in ("tensorflow", *PREFERRED):
        raise VggtlError(f"{ENV}={forced!r}: allowed values are tensorflow, {', '.join(PREFERRED)}")
    if keras_forced():
        return None, None
    for runtime in (forced,) if forced else PREFERRED:
        if can_convert(runtime):
            return runtime, None
    modules, extra = NEEDS[forced or PREFERRED[0]]
    return None, (f"note: predict ran model.keras in TensorFlow (~6 s of imports); pip install 'vggtl[{extra}]' "
                  f"lets it convert the model once and then predict without importing TensorFlow")


def predictor(art, runtime: str, log=None, name: str = "model.keras"):
    """The artifact's Keras file ``name`` (``model.keras``: uint8 images ``(n, S,
    S, 3)`` -> probabilities; ``head.keras``: features -> probabilities)
    converted to ``runtime``, converting and verifying it the first time."""
    folder = cache_folder(art, runtime, name)
    from vggtl.features.runtimes import cached_conversion

    say = log or (lambda line: print(line, file=sys.stderr))
    if cached_conversion(folder, lambda staging: _convert(art, name, runtime, staging), say):
        record = json.loads((folder / "verification.json").read_text())
        say(f"converted {art.path / name} to {runtime} once (max |dp| {record['max_abs_dprob']:.2g} on "
            f"{record['images']} probe inputs); cached in {folder}: later predicts skip TensorFlow")
    return load(folder / FILENAME[runtime], runtime)


def can_convert(runtime: str) -> bool:
    """``runtime`` and its converter are installed (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in NEEDS[runtime][0])


def cache_folder(art, runtime: str, name: str = "model.keras") -> Path:
    from vggtl.backbones.keras_files import cache_dir

    return Path(cache_dir()) / "predict" / f"{runtime}-{art.checksums[name][:32]}"


def load(path: Path, runtime: str):
    """The converted model at ``path`` as ``inputs -> probabilities``, or for a
    model with an unknown score ``inputs -> (probabilities, scores)``. Inputs:
    an array, or for a model of several inputs ``{Keras input name: array}``."""
    from vggtl.features import runtimes

    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", runtimes.openvino_config())
        inputs = [" ".join(sorted(i.get_names())) for i in compiled.inputs]
        names = [next(iter(sorted(o.get_names())), "") for o in compiled.outputs]
        run = lambda x: [np.asarray(y) for y in compiled(_feeds(inputs, x)).values()]  # noqa: E731
    else:
        session = runtimes.onnx_session(path)
        inputs, names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        run = lambda x: session.run(None, dict(zip(inputs, _feeds(inputs, x))))  # noqa: E731
    if len(names) == 1:
        return lambda x: run(x)[0]
    score = next(i for i, n in enumerate(names) if UNKNOWN_SCORE in n)
    return lambda x: (lambda ys: (ys[1 - score], ys[score]))(run(x))


def _feeds(runtime_inputs: list[str], x) -> list[np.ndarray]:
    """``x`` in the order of the converted model's inputs: a dict's arrays by
    the Keras input name each runtime input's name contains (longest first)."""
    if not isinstance(x, dict):
        return [np.asarray(x, np.float32)]
    keys = sorted(x, key=len, reverse=True)
    return [np.asarray(x[next(k for k in keys if k in name)], np.float32) for name in runtime_inputs]


def probe_images(size: int, n: int = PROBES) -> np.ndarray:
    """Deterministic uint8 probes: smooth gradients and noise, each a different mix."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), axis=-1)
    noise = rng.integers(0, 256, (n, size, size, 3)).astype(np.float32)
    weights = np.linspace(0, 1, n, dtype=np.float32)[:, None, None, None]
    return np.clip(weights * noise + (1 - weights) * smooth, 0, 255).astype(np.uint8)


def probe_features(shape, n: int = PROBES) -> np.ndarray:
    """Deterministic probes for a head: non-negative like the ReLU/pooled maps it reads."""
    rng = np.random.default_rng(0)
    return np.abs(rng.normal(0.0, 1.0, (n, *shape))).astype(np.float32) * np.linspace(0.1, 10, n, dtype=np.float32).reshape(
        (n,) + (1,) * len(shape))


def _convert(art, name: str, runtime: str, staging: Path) -> None:
    """The Keras file ``name`` -> ``runtime`` in ``staging``, verified on probe inputs (raises when it disagrees)."""
    from vggtl import tfquiet
    from vggtl.backbones.savedmodel import float_savedmodel, to_onnx
    from vggtl.training import artifact as artifact_mod

    tfquiet.load()
    model = art.load_model(with_unknown=True) if name == "model.keras" else artifact_mod.load_keras(art.path / name)
    path = staging / FILENAME[runtime]
    with float_savedmodel(model) as saved:
        if runtime == "onnxruntime":
            to_onnx(saved, path)
        else:
            import openvino as ov

            ov.save_model(ov.convert_model(saved), str(path), compress_to_fp16=False)
    if name == "model.keras":
        x = probe_images(model.input_shape[1])
    elif len(model.inputs) == 1:
        x = probe_features(model.input_shape[1:])
    else:  # head.keras with the unknown score: features and channel statistics
        x = {t.name: probe_features(t.shape[1:]) for t in model.inputs}
    expected, got = predict_eagerly(model, x), load(path, runtime)(x)
    if isinstance(expected, dict):  # probabilities and the unknown score: both must agree
        (expected, reference), (got, score) = (expected[PROBABILITIES], expected[UNKNOWN_SCORE]), got
        score_gap = float(np.max(np.abs(reference - score) / np.maximum(1.0, np.abs(reference))))
        if not score_gap <= SCORE_TOLERANCE:
            raise VggtlError(f"the {runtime} conversion of {art.path / name} gives another unknown score (by {score_gap:.3g} "
                             f"> {SCORE_TOLERANCE}); set {ENV}=tensorflow to predict with the Keras files")
    gap = float(np.max(np.abs(expected - got)))
    if not gap <= TOLERANCE or not np.array_equal(expected.argmax(1), got.argmax(1)):
        raise VggtlError(f"the {runtime} conversion of {art.path / name} differs from it by {gap:.3g} "
                         f"(> {TOLERANCE}); set {ENV}=tensorflow to predict with the Keras files")
    (staging / "verification.json").write_text(json.dumps(
        {"file": name, "sha256": art.checksums[name], "runtime": runtime, "images": PROBES, "max_abs_dprob": gap,
         "tolerance": TOLERANCE}, indent=1), encoding="utf-8")

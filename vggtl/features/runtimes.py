"""Runtimes for the frozen forward pass: TensorFlow, or the same model converted
to OpenVINO or ONNX Runtime (``extract.runtime``).

The converted model is built once per machine from the same Keras model and
weights (frozen SavedModel -> ``openvino.convert_model`` / tf2onnx) and cached
under ``$VGGTL_CACHE_DIR/runtimes/<key>/``, keyed by the weights digest, the
layers, the image size, the preprocessing and the runtime's version. Every
cached file's sha256 is recorded beside it and checked before use: a
corrupted file is rebuilt, never loaded. A converted model is written in a
temporary directory and renamed, so a killed conversion leaves nothing that
looks usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggtl.errors import MissingExtra
from vggtl.files import sha256_file

RUNTIMES = ("tensorflow", "openvino", "onnxruntime")


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str  # what the extra provides (checked without importing it)
    extra: str
    filename: str  # the converted model's main file


CONVERTED = {
    "openvino": Runtime("openvino", "openvino", "openvino", "model.xml"),
    "onnxruntime": Runtime("onnxruntime", "onnxruntime", "onnx", "model.onnx"),
}


def check_installed(runtime: str) -> None:
    """Raise :class:`MissingExtra` naming the extra, without importing the runtime
    (a warm re-run with nothing to compute must not pay for it)."""
    import importlib.util

    spec = CONVERTED.get(runtime)
    missing = [m for m in (spec.module, "tf2onnx" if runtime == "onnxruntime" else None) if m] if spec else []
    for module in missing:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"extract.runtime: {runtime} needs the optional package {module!r}: pip install 'vggtl[{spec.extra}]'")


def runtime_version(runtime: str) -> str:
    import importlib.metadata

    return importlib.metadata.version({"openvino": "openvino", "onnxruntime": "onnxruntime"}[runtime])


def model_key(spec, weights_digest: str, runtime: str) -> str:
    """What the converted model depends on, hashed: a change to any of it converts again."""
    parts = {"backbone": spec.name, "layers": list(spec.stored_layers), "image_size": spec.image_size,
             "preprocessing": spec.arch.preprocessing_description, "weights": weights_digest,
             "runtime": runtime, "runtime_version": runtime_version(runtime), "format": 1}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def converted_model(cfg, weights, runtime: str, log=print) -> Path:
    """The cached converted feature model of ``cfg`` for ``runtime``, converting
    (and caching) it when absent or corrupted."""
    from vggtl.backbones.keras_files import cache_dir

    spec = CONVERTED[runtime]
    folder = Path(cache_dir()) / "runtimes" / f"{runtime}-{model_key(cfg.spec, weights.digest, runtime)}"
    problem = _cache_problem(folder)
    if problem is None:
        return folder / spec.filename
    if folder.exists():
        log(f"warning: cached {runtime} model {folder}: {problem}; converting again")
    staging = folder.with_name(f".{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        _convert(cfg, weights, runtime, staging / spec.filename)
        sums = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        (staging / "sha256.json").write_text(json.dumps(sums, indent=1), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"converted the frozen base to {runtime} once; cached in {folder}")
    return folder / spec.filename


def _cache_problem(folder: Path) -> str | None:
    """Why the cached model in ``folder`` cannot be used, or None."""
    sums = folder / "sha256.json"
    if not sums.is_file():
        return "missing" if not folder.exists() else "incomplete (no sha256.json)"
    for name, digest in json.loads(sums.read_text()).items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        if sha256_file(folder / name) != digest:
            return f"{name} does not match its recorded sha256 (corrupted)"
    return None


def _convert(cfg, weights, runtime: str, path: Path) -> None:
    """Frozen SavedModel of the multi-output feature model -> the runtime's format.
    Outputs are named ``out0``, ``out1``, ... in ``spec.stored_layers`` order."""
    from vggtl import tfquiet
    from vggtl.backbones import build
    from vggtl.backbones.savedmodel import float_savedmodel, to_onnx

    tfquiet.load()
    layers = list(cfg.spec.stored_layers)
    model = build.feature_model(cfg.spec, weights, layers, cfg.seed)

    def outputs(y):
        return {f"out{i}": t for i, t in enumerate(y if isinstance(y, (list, tuple)) else [y])}

    with float_savedmodel(model, outputs) as saved:
        if runtime == "onnxruntime":
            to_onnx(saved, path)
        else:
            import openvino as ov

            ov.save_model(ov.convert_model(saved), str(path), compress_to_fp16=False)


def make_forward(cfg, weights, runtime: str, log=print):
    """uint8 images ``(N, S, S, 3)`` -> ``{layer: float32 features}`` through ``runtime``."""
    path = converted_model(cfg, weights, runtime, log)
    layers = list(cfg.spec.stored_layers)
    if runtime == "openvino":
        import openvino as ov

        # LATENCY: on a 2-core laptop the THROUGHPUT hint was measured 1.7x slower
        # (issue notes); INFERENCE_PRECISION_HINT f32 keeps bf16 CPUs at fp32.
        compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        order = [next(o for o in compiled.outputs if f"out{i}" in o.get_names()) for i in range(len(layers))]

        def forward(x):
            result = compiled(np.asarray(x, np.float32))
            return {layer: result[o] for layer, o in zip(layers, order)}

        return forward
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    wanted = [next(n for n in names if n.startswith(f"out{i}")) for i in range(len(layers))]

    def forward(x):
        return dict(zip(layers, session.run(wanted, {name: np.asarray(x, np.float32)})))

    return forward

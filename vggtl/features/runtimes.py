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

@dataclass(frozen=True)
class Runtime:
    extra: str  # pip install 'vggtl[<extra>]'
    filename: str  # the converted model's main file
    modules: tuple[str, ...]  # what fp32 needs (checked without importing it)
    int8_modules: tuple[str, ...] = ()  # and what int8 needs on top


# Keyed by extract.runtime, which is also the runtime's package name.
CONVERTED = {
    "openvino": Runtime("openvino", "model.xml", ("openvino",), ("nncf",)),
    "onnxruntime": Runtime("onnx", "model.onnx", ("onnxruntime", "tf2onnx")),
}


def check_installed(runtime: str, precision: str = "fp32") -> None:
    """Raise :class:`MissingExtra` naming the extra, without importing the runtime
    (a warm re-run with nothing to compute must not pay for it)."""
    import importlib.util

    spec = CONVERTED.get(runtime)
    if spec is None:  # tensorflow: a core dependency
        return
    for module in spec.modules + (spec.int8_modules if precision == "int8" else ()):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"extract.runtime: {runtime} needs the optional package {module!r}: pip install 'vggtl[{spec.extra}]'")


def calibration_digest(files) -> str | None:
    """Digest of the int8 calibration images (their content hashes, in order); None for fp32."""
    if files is None:
        return None
    return hashlib.sha256(",".join(f.sha256 for f in files).encode()).hexdigest()[:16]


def runtime_version(runtime: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(runtime)


def model_key(spec, weights_digest: str, runtime: str, calibration: str | None = None) -> str:
    """What the converted model depends on, hashed: a change to any of it converts
    again (``calibration``: the int8 calibration images' digest, None for fp32)."""
    parts = {"backbone": spec.name, "layers": list(spec.stored_layers), "image_size": spec.image_size,
             "preprocessing": spec.arch.preprocessing_description, "weights": weights_digest,
             "runtime": runtime, "runtime_version": runtime_version(runtime), "format": 1}
    if spec.mirror_average:  # the converted model holds the mirror branch (only when on: other keys unchanged)
        parts["mirror_average"] = True
    if calibration is not None:
        parts.update(precision="int8", calibration=calibration, quantizer=_quantizer_version(runtime))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _quantizer_version(runtime: str) -> str:
    import importlib.metadata

    return importlib.metadata.version("nncf") if runtime == "openvino" else runtime_version(runtime)


def converted_model(cfg, weights, runtime: str, log=print, calibration=None) -> Path:
    """The cached converted feature model of ``cfg`` for ``runtime``, converting
    (and caching) it when absent or corrupted; int8 when ``calibration`` (the
    calibration images, :func:`vggtl.plan.calibration_files`) is given."""
    from vggtl.backbones.keras_files import cache_dir

    spec = CONVERTED[runtime]
    key = model_key(cfg.spec, weights.digest, runtime, calibration_digest(calibration))
    precision = "fp32" if calibration is None else "int8"
    folder = Path(cache_dir()) / "runtimes" / f"{runtime}-{precision}-{key}"
    if cached_conversion(folder, lambda staging: _convert(cfg, weights, runtime, staging / spec.filename, calibration), log):
        log(f"converted the frozen base to {runtime} {precision} once"
            + (f" (calibrated on {len(calibration)} training images)" if calibration else "") + f"; cached in {folder}")
    return folder / spec.filename


def cached_conversion(folder: Path, convert, log=print) -> bool:
    """Make ``folder`` by ``convert(staging)`` unless it already holds a usable
    conversion (every file matching the sha256 recorded beside it). Written
    in a temporary directory and renamed: a killed conversion leaves nothing
    that looks usable. Returns True when it converted."""
    problem = _cache_problem(folder)
    if problem is None:
        return False
    if folder.exists():
        log(f"warning: cached converted model {folder}: {problem}; converting again")
    staging = folder.with_name(f".{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        convert(staging)
        sums = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        (staging / "sha256.json").write_text(json.dumps(sums, indent=1), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


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


def _convert(cfg, weights, runtime: str, path: Path, calibration=None) -> None:
    """Frozen SavedModel of the multi-output feature model -> the runtime's format,
    post-training quantized to int8 when ``calibration`` images are given.
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
            if calibration:
                _quantize_onnx(path, list(_calibration_images(cfg, calibration)))
        else:
            import openvino as ov

            ir = ov.convert_model(saved)
            if calibration:
                import nncf

                images = list(_calibration_images(cfg, calibration))
                ir = nncf.quantize(ir, nncf.Dataset(images), subset_size=len(images))
            ov.save_model(ir, str(path), compress_to_fp16=False)


def _calibration_images(cfg, files):
    """Calibration images decoded as in extraction, (1, S, S, 3) float32 each
    (an undecodable one is left out, as extraction skips it)."""
    from vggtl.data import UndecodableImage

    for f in files:
        try:
            yield cfg.spec.decode.decode(f.path)[None].astype(np.float32)
        except UndecodableImage:
            continue


def _quantize_onnx(path: Path, images) -> None:
    """Static int8 quantization (QDQ, per-channel weights) of the ONNX model at ``path``, in place."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(images)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {name: x}

    fp32 = path.with_name("fp32.onnx")
    os.replace(path, fp32)
    quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    fp32.unlink()


def make_forward(cfg, weights, runtime: str, log=print, calibration=None):
    """uint8 images ``(N, S, S, 3)`` -> ``{layer: float32 features}`` through ``runtime``
    (int8 when ``calibration`` images are given)."""
    path = converted_model(cfg, weights, runtime, log, calibration)
    return load_forward(path, runtime, list(cfg.spec.stored_layers))


# Threads an ONNX Runtime session or OpenVINO model may use; set by an engine
# that runs several on one machine (Ray actors: one per CPU). Unset: every core.
THREADS_ENV = "VGGTL_RUNTIME_THREADS"


def runtime_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def openvino_config() -> dict:
    """How vggtl compiles an OpenVINO model: LATENCY (on a 2-core laptop the
    THROUGHPUT hint was measured 1.7x slower), f32 (bf16 CPUs stay at fp32)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads := runtime_threads():
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def onnx_session(path):
    """An ONNX Runtime CPU session of ``path`` (threads capped by :data:`THREADS_ENV`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads := runtime_threads():
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_forward(path, runtime: str, layers):
    """The converted model at ``path`` (outputs ``out0``, ``out1``, ... in the
    order of ``layers``) as a function: images ``(N, S, S, 3)`` -> ``{layer: float32 features}``.
    Also what ``predict`` runs on the copy an artifact carries."""
    layers = list(layers)
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", openvino_config())
        order = [next(o for o in compiled.outputs if f"out{i}" in o.get_names()) for i in range(len(layers))]

        def forward(x):
            result = compiled(np.asarray(x, np.float32))
            return {layer: result[o] for layer, o in zip(layers, order)}

        return forward
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    wanted = [next(n for n in names if n.startswith(f"out{i}")) for i in range(len(layers))]

    def forward(x):
        return dict(zip(layers, session.run(wanted, {name: np.asarray(x, np.float32)})))

    return forward

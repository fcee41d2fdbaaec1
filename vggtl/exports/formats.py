"""The export formats, as data: how each is written and which runtime reads it.

A new format is one :class:`Format` entry: its writer, the quantization
modes it accepts, the optional extra its converter and runtime need, and the
file the runner script (:mod:`vggtl.exports.runner`) loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from typing import Callable

from vggtl.backbones.savedmodel import FloatSavedModels, float_savedmodel, save_module, to_onnx

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
# Dynamic-range quantization stores every large weight in int8, the unknown
# score's distance matrices too (no op can be kept in float): measured, its
# unknown decisions agreed with model.keras's on none of the test images. Those
# exports carry the probabilities only (export.json and the table say so).
WITHOUT_UNKNOWN = ("dynamic",)


@dataclass(frozen=True)
class Format:
    name: str
    # (sources: the model's FloatSavedModels, out_dir, labels, quantize, representative, threshold)
    # -> the file/dir the runtime loads
    write: Callable
    quantize: tuple[str, ...] = ("none",)
    extra: str | None = None  # pip install 'vggtl[<extra>]'
    modules: tuple[str, ...] = ()  # what the extra provides (checked before any work)
    input_dtype: str = "float32"
    # The extraction runtime whose converted base this format can carry, and the
    # writer composing it with the model on its features (see write_*_on_base).
    base_runtime: str | None = None
    write_on_base: Callable | None = None  # (base file, {head input: base output index}, head, out_dir, labels) -> the file


def input_spec(model) -> tuple[int, int]:
    """(height, width) of the model's image input."""
    return tuple(model.input_shape[1:3])


def write_savedmodel(sources: FloatSavedModels, out: Path, labels, quantize, representative, threshold=None) -> Path:
    """A SavedModel whose ``serving_default`` takes a batch of uint8 RGB images
    (``image``) and returns ``probabilities``, ``class_index`` and ``label``
    (and for a model with unknown detection ``unknown_score`` and ``unknown``:
    the score above ``threshold``); ``serving_float`` takes the same images as
    float32 0-255. The labels and the threshold are constants inside the
    graph. Servable by TensorFlow Serving as it is."""
    import tensorflow as tf

    model = sources.model
    height, width = input_spec(model)
    names = tf.constant(list(labels))

    def outputs(x):
        y = model(x, training=False)
        probs = y["probabilities"] if isinstance(y, dict) else y
        index = tf.argmax(probs, axis=1, output_type=tf.int32)
        found = {"probabilities": probs, "class_index": index, "label": tf.gather(names, index)}
        if isinstance(y, dict):
            found |= {"unknown_score": y["unknown_score"], "unknown": y["unknown_score"] > tf.constant(threshold, tf.float32)}
        return found

    uint8 = tf.TensorSpec([None, height, width, 3], tf.uint8, name="image")
    float32 = tf.TensorSpec([None, height, width, 3], tf.float32, name="image")
    signatures = {"serving_default": (lambda image: outputs(tf.cast(image, tf.float32)), uint8),
                  "serving_float": (outputs, float32)}
    path = out / "savedmodel"
    save_module(model, signatures, path)
    return path


def write_tflite(sources: FloatSavedModels, out: Path, labels, quantize, representative, threshold=None) -> Path:
    """A LiteRT (TFLite) flatbuffer: float32 RGB 0-255 in, probabilities out
    (and the unknown score, when the model has it; ``export.json`` holds the threshold).

    ``float16`` halves the weights; ``dynamic`` stores int8 weights; ``int8``
    also quantizes activations, calibrated on ``representative`` (training
    images decoded as in extraction), with float input and output kept.
    """
    import tensorflow as tf

    saved = sources.path(probabilities_only=quantize in WITHOUT_UNKNOWN)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
    path = out / "model.tflite"
    path.write_bytes(_convert(converter, quantize, representative))
    return path


# int8 keeps these in float: everything but the convolutions and max pooling
# (> 99% of the cost). Measured on clipart8 (docs/artifacts.md): with them in
# int8 too, 6 of 64 test images changed label (agreement 0.906, max |dp|
# 0.49) because the head's and the probe's standardized features span a huge
# range that one per-tensor int8 scale cannot hold; the convolutions alone in
# int8 gave 64 of 64 (max |dp| 0.05) at 32.8 vs 36.0 images/s.
# The unknown score's channel statistics and distances (LOG, SQUARE, ...) too:
# their values span orders of magnitude.
INT8_FLOAT_OPS = ("FULLY_CONNECTED", "SOFTMAX", "MEAN", "SUM", "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQRT",
                  "RSQRT", "REDUCE_MAX", "CONCATENATION", "AVERAGE_POOL_2D", "TRANSPOSE", "RESHAPE", "LOG", "SQUARE",
                  "SQUARED_DIFFERENCE", "STRIDED_SLICE", "PACK", "L2_NORMALIZATION", "BATCH_MATMUL")


def _convert(converter, quantize: str, representative) -> bytes:
    import tensorflow as tf

    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize != "int8":
        return converter.convert()
    calibration = lambda: ([image[None].astype("float32")] for image in representative())  # noqa: E731
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # Selective quantization, LiteRT's supported way: the debugger converts
    # with the listed op types left in float.
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(INT8_FLOAT_OPS))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=calibration, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def float_ops(path: Path) -> dict[str, int]:
    """``{op type: count}`` of the ops of a LiteRT model whose outputs are float32
    (in an int8 export: what was kept in float), from the model's own op table."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op-level listing the interpreter offers
        if op["op_name"] not in ("DEQUANTIZE", "QUANTIZE") and any(dtypes.get(i) == np.float32 for i in op["outputs"]):
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


def _label_onnx(path: Path, labels) -> None:
    """Put ``labels`` into the ONNX model's ``metadata_props`` (``labels``, a JSON list)."""
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "labels", json.dumps(list(labels))
    onnx.save(proto, str(path))


def write_onnx(sources: FloatSavedModels, out: Path, labels, quantize, representative, threshold=None) -> Path:
    """ONNX by tf2onnx from the frozen SavedModel; the labels go into
    the model's ``metadata_props`` (``labels``, a JSON list).

    Keras' own ``model.export(format="onnx")`` is not used: with TF 2.21 its
    ONNX graph wanted the Normalization layers' constants fed as inputs.
    """
    path = out / "model.onnx"
    to_onnx(sources.path(), path)
    _label_onnx(path, labels)
    return path


def write_onnx_on_base(base: Path, feeds: dict[str, int], head, out: Path, labels) -> Path:
    """ONNX of the artifact's carried ONNX Runtime base (fp32 or int8 QDQ, as
    extraction ran it) with ``head`` (``head.keras``) on its outputs: ``feeds``
    maps each of the head's input names to the base output ``out<index>`` it
    reads. The model the metrics were computed with, as one file."""
    import onnx
    from onnx import compose

    path = out / "model.onnx"
    with float_savedmodel(head) as saved:
        to_onnx(saved, out / "head.onnx")
    top = compose.add_prefix(onnx.load(str(out / "head.onnx")), "head/")
    (out / "head.onnx").unlink()
    bottom = onnx.load(str(base))
    bottom.ir_version = top.ir_version = max(bottom.ir_version, top.ir_version)
    io_map = [(_base_output([o.name for o in bottom.graph.output], feeds[key]), name)
              for name, key in _head_inputs([i.name for i in top.graph.input], feeds)]
    merged = compose.merge_models(bottom, top, io_map=io_map, outputs=[o.name for o in top.graph.output])
    onnx.save(merged, str(path))
    _label_onnx(path, labels)
    return path


def _head_inputs(names: list[str], feeds: dict[str, int]) -> list[tuple[str, str]]:
    """``(converted input name, Keras input name)`` of a converted head's inputs:
    the Keras name each contains (longest first: ``features`` is not in ``channel_stats``)."""
    keys = sorted(feeds, key=len, reverse=True)
    return [(name, next(k for k in keys if k in name)) for name in names]


def _base_output(names: list[str], index: int) -> str:
    """The carried base's output ``out<index>`` among ``names``."""
    return next(n for n in names if n == f"out{index}" or n.startswith(f"out{index}:"))


def write_openvino(sources: FloatSavedModels, out: Path, labels, quantize, representative, threshold=None) -> Path:
    """OpenVINO IR (.xml + .bin, fp32 weights) converted from the frozen
    SavedModel; the labels in the model's runtime info (``vggtl/labels``)."""
    import openvino as ov

    return _save_openvino(ov.convert_model(sources.path()), out, labels)


def _save_openvino(ir, out: Path, labels) -> Path:
    import openvino as ov

    ir.set_rt_info(json.dumps(list(labels)), ["vggtl", "labels"])
    path = out / "model.xml"
    ov.save_model(ir, str(path), compress_to_fp16=False)
    return path


def write_openvino_on_base(base: Path, feeds: dict[str, int], head, out: Path, labels) -> Path:
    """OpenVINO IR of the artifact's carried OpenVINO base (fp32 or NNCF int8, as
    extraction ran it) with ``head`` (``head.keras``) on its outputs (``feeds``:
    as for :func:`write_onnx_on_base`): the model the metrics were computed with, as one IR."""
    import openvino as ov

    bottom = ov.Core().read_model(str(base))
    with float_savedmodel(head) as saved:
        top = ov.convert_model(saved)
    parameters = top.get_parameters()
    names = [" ".join([p.get_friendly_name(), *p.output(0).get_names()]) for p in parameters]
    for parameter, (_, key) in zip(parameters, _head_inputs(names, feeds)):
        source = next(r for r in bottom.get_results() if f"out{feeds[key]}" in r.input_value(0).get_names())
        for consumer in parameter.output(0).get_target_inputs():
            consumer.replace_source_output(source.input_value(0))
    return _save_openvino(ov.Model(top.get_results(), bottom.get_parameters(), "vggtl"), out, labels)


FORMATS = {
    "savedmodel": Format("savedmodel", write_savedmodel, input_dtype="uint8"),
    "tflite": Format("tflite", write_tflite, quantize=QUANTIZE_MODES),
    "onnx": Format("onnx", write_onnx, extra="onnx", modules=("tf2onnx", "onnxruntime", "onnx"),
                   base_runtime="onnxruntime", write_on_base=write_onnx_on_base),
    "openvino": Format("openvino", write_openvino, extra="openvino", modules=("openvino",),
                       base_runtime="openvino", write_on_base=write_openvino_on_base),
}

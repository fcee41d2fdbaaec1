"""Run exported models with their own runtimes: a standalone script.

It is executed in a subprocess (``python runner.py IMAGES JOBS``) and imports
nothing from vggtl, so an export that only works with vggtl's code around it
fails here, not on the user's machine. IMAGES is a ``.npy`` of uint8 RGB
images (N, S, S, 3); JOBS a JSON list of ``[FORMAT, MODEL, OUT]``: each OUT
receives the ``probabilities`` (.npy), ``OUT.unknown.npy`` the unknown scores
(a model with unknown detection), and ``OUT.json`` the inference time, or
``{"error": ...}`` when that model could not be run (the next job still runs).

One process runs every export of a ``vggtl export`` command: each runtime is
imported once (TensorFlow alone takes seconds), not once per export.
"""

import gc
import json
import sys
import time
import traceback
import types

import numpy as np

BATCH = 16


def named(outputs):
    """``(probabilities, unknown scores or None)`` of a model's outputs: the
    scores are the one-dimensional output (one number per image)."""
    arrays = [np.asarray(o) for o in outputs]
    probs = next(a for a in arrays if a.ndim == 2)
    scores = next((a for a in arrays if a.ndim == 1), None)
    return probs, scores


def savedmodel(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]

    def run(x):
        out = serve(image=tf.constant(x))
        return out["probabilities"].numpy(), (out["unknown_score"].numpy() if "unknown_score" in out else None)

    return run


def tflite(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=path, num_threads=None)
    (inp,), outs = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x):
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        return named(interpreter.get_tensor(out["index"]) for out in outs)

    return run


def onnx(path):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: named(session.run(None, {name: x.astype(np.float32)}))


def openvino(path):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if any(o.get_partial_shape().rank.get_length() == 1 for o in model.outputs):
        # An unknown score: on CPUs with bf16 (AVX512_BF16, AMX) OpenVINO runs
        # bf16 by default, which moves a sum of a thousand squares by whole
        # units; export.json tells users to compile it in f32 too.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", config)
    return lambda x: named(compiled(x.astype(np.float32)).values())


RUNTIMES = {"savedmodel": savedmodel, "tflite": tflite, "onnx": onnx, "openvino": openvino}


def run_one(fmt, model, x, out):
    run = RUNTIMES[fmt](model)
    run(x[:1])  # warm-up: graph building and allocation are not inference speed
    started = time.perf_counter()
    batches = [run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    seconds = time.perf_counter() - started
    np.save(out, np.concatenate([p for p, _ in batches]).astype(np.float32))
    if batches[0][1] is not None:
        np.save(out + ".unknown.npy", np.concatenate([s for _, s in batches]).astype(np.float32))
    with open(out + ".json", "w") as f:
        json.dump({"seconds": seconds, "images": len(x)}, f)


def main(images, jobs):
    # No garbage collection while the runtimes import (TensorFlow's import
    # makes ~a million objects the collector would walk again and again:
    # ~0.8 s of its ~5 s here), nor after: a short process running inference.
    gc.disable()
    # TensorFlow's import imports Keras, whose scikit-learn wrappers import
    # scikit-learn (~0.9 s); no runtime here uses them: an empty module instead.
    sys.modules.setdefault("keras.wrappers", types.ModuleType("keras.wrappers"))
    x = np.load(images)
    with open(jobs) as f:
        todo = json.load(f)
    for fmt, model, out in todo:
        try:
            run_one(fmt, model, x, out)
        except Exception as error:  # noqa: BLE001 - reported per export; the others still run
            lines = traceback.format_exception_only(type(error), error)
            with open(out + ".json", "w") as f:
                json.dump({"error": " ".join(line.strip() for line in lines)[-600:]}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])

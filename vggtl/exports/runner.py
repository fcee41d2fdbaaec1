"""Run exported models with their own runtimes: a standalone script.

It is executed in a subprocess (``python runner.py IMAGES JOBS``) and imports
nothing from vggtl, so an export that only works with vggtl's code around it
fails here, not on the user's machine. IMAGES is a ``.npy`` of uint8 RGB
images (N, S, S, 3); JOBS a JSON list of ``[FORMAT, MODEL, OUT]``: each OUT
receives the ``probabilities`` (.npy) and ``OUT.json`` the inference time, or
``{"error": ...}`` when that model could not be run (the next job still runs).

One process runs every export of a ``vggtl export`` command: each runtime is
imported once (TensorFlow alone takes seconds), not once per export.
"""

import json
import sys
import time
import traceback

import numpy as np

BATCH = 16


def savedmodel(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda x: serve(image=tf.constant(x))["probabilities"].numpy()


def tflite(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=path, num_threads=None)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x):
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run


def onnx(path):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.astype(np.float32)})[0]


def openvino(path):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled(x.astype(np.float32))[0]


RUNTIMES = {"savedmodel": savedmodel, "tflite": tflite, "onnx": onnx, "openvino": openvino}


def run_one(fmt, model, x, out):
    run = RUNTIMES[fmt](model)
    run(x[:1])  # warm-up: graph building and allocation are not inference speed
    started = time.perf_counter()
    probs = np.concatenate([run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
    seconds = time.perf_counter() - started
    np.save(out, probs.astype(np.float32))
    with open(out + ".json", "w") as f:
        json.dump({"seconds": seconds, "images": len(x)}, f)


def main(images, jobs):
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

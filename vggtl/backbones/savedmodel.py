"""A Keras model as a frozen TensorFlow SavedModel: what every converter
(LiteRT, tf2onnx, OpenVINO) starts from, for exports and extraction runtimes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile

ONNX_OPSET = 17


def save_module(model, signatures: dict, path) -> None:
    """``tf.saved_model.save`` of a module holding the model's variables once and
    one tf.function per ``{name: (fn, input spec or list of specs)}``.

    Keras' ExportArchive wrote every weight twice here (a 115 MB SavedModel of
    a 60 MB model); listing the underlying tf.Variables once does not.
    """
    import tensorflow as tf

    module = tf.Module()
    module.weights = [v.value for v in model.variables]
    functions = {name: tf.function(fn, input_signature=spec if isinstance(spec, list) else [spec], autograph=False)
                 for name, (fn, spec) in signatures.items()}
    for name, fn in functions.items():
        setattr(module, name, fn)
    tf.saved_model.save(module, str(path), signatures=functions)


@contextlib.contextmanager
def float_savedmodel(model, outputs=None):
    """A temporary SavedModel of ``model`` with one ``serving_default``:
    float32 RGB 0-255 images (``image``; for a model on features, its input
    shape; for a model of several inputs, one argument per input, named as
    it) -> ``outputs(model(image))`` (default: ``{"probabilities": ...}``,
    or the model's own named outputs, e.g. ``{"probabilities", "unknown_score"}``).

    The converters start from it rather than from a live function: loading a
    SavedModel freezes every variable and captured constant into the graph
    (from a concrete function the TFLite int8 calibrator meets READ_VARIABLE
    ops, and tf2onnx turns the Normalization layers' constants into extra
    graph inputs).
    """
    import tensorflow as tf

    outputs = outputs or (lambda y: y if isinstance(y, dict) else {"probabilities": y})
    if len(model.inputs) == 1:
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="image")
        serve = lambda image: outputs(model(image, training=False))  # noqa: E731
    else:
        spec = [tf.TensorSpec([None, *t.shape[1:]], tf.float32, name=t.name) for t in model.inputs]
        serve = lambda *inputs: outputs(model(list(inputs), training=False))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        save_module(model, {"serving_default": (serve, spec)}, tmp)
        yield tmp


def _probabilities_alone(y) -> dict:
    return {"probabilities": y["probabilities"] if isinstance(y, dict) else y}


class FloatSavedModels:
    """The float SavedModels (:func:`float_savedmodel`) of one model, each
    written once and kept until :meth:`close`: every converter of one command
    (LiteRT in each quantization, tf2onnx, OpenVINO) starts from the same
    directory instead of writing its own (a 60 MB VGG16's takes seconds).

    Attributes:
        model: the Keras model they are made of.
    """

    def __init__(self, model):
        self.model = model
        self._stack = contextlib.ExitStack()
        self._paths: dict[bool, str] = {}

    def path(self, probabilities_only: bool = False) -> str:
        """The SavedModel returning the model's own outputs, or with
        ``probabilities_only`` the probabilities alone (TensorFlow then prunes
        the unknown score's branch); each written on first use."""
        if probabilities_only not in self._paths:
            outputs = _probabilities_alone if probabilities_only else None
            self._paths[probabilities_only] = self._stack.enter_context(float_savedmodel(self.model, outputs))
        return self._paths[probabilities_only]

    def close(self) -> None:
        """Remove every SavedModel written."""
        self._stack.close()
        self._paths.clear()

    def __enter__(self) -> "FloatSavedModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_onnx(saved_model_dir, path) -> None:
    """Convert the ``serving_default`` of a SavedModel to ONNX (opset
    :data:`ONNX_OPSET`) with tf2onnx's own command line, in a subprocess
    (its converter holds a lot of memory and global state)."""
    done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model_dir), "--signature_def",
                           "serving_default", "--opset", str(ONNX_OPSET), "--output", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tf2onnx failed: {done.stderr.strip()[-800:]}")

"""Import TensorFlow without its start-up chatter, keeping every other message.

TensorFlow 2.21 prints absl log lines (CPU features, "no CUDA driver",
"failed call to cuInit", a tf.data attribute notice) straight to file
descriptor 2 before its own log settings apply, so TF_CPP_MIN_LOG_LEVEL
cannot hide them. We capture fd 2 around the few calls that emit them and
re-print every captured line that is not one of those known notices.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
import types

NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|failed call to cuInit|use_unbounded_threadpool|"
    r"cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions|"
    r"fully_quantize: \d+, inference_type"
)
_loaded = False
# Set in a command's process (defer_unused_imports): load() defers DEFERRABLE.
_defer_in_load = False
# The real stderr while filtered_stderr captures fd 2 (progress bars write here).
_terminal_fd: int | None = None


@contextlib.contextmanager
def filtered_stderr():
    """Capture fd 2 for the duration; afterwards re-emit all but the known TF notices."""
    global _terminal_fd
    sys.stderr.flush()
    saved = os.dup(2)
    outer, _terminal_fd = _terminal_fd, saved
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            _terminal_fd = outer
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def terminal():
    """A text stream to the user's stderr, also while :func:`filtered_stderr`
    captures fd 2 (a live progress bar must not wait for the end of the run).
    The caller closes it unless it is ``sys.stderr`` itself, which is returned
    when stderr has no file descriptor (notebooks, test capture)."""
    if _terminal_fd is not None:
        return os.fdopen(os.dup(_terminal_fd), "w", buffering=1)
    return sys.stderr


def quiet(main):
    """Decorate a ``main(argv)`` whose TensorFlow work (Keras fit/predict print a
    tf.data notice per graph) should run under :func:`filtered_stderr`.
    Not for commands with a live progress bar on stderr."""

    @functools.wraps(main)
    def wrapper(argv=None):
        with filtered_stderr():
            return main(argv)

    return wrapper


@contextlib.contextmanager
def collections_paused():
    """No cyclic garbage collection for the duration; what exists at the end
    is moved to the permanent generation (``gc.freeze``), where later
    collections do not look. TensorFlow and Keras make millions of long-lived
    objects on import: every full collection walks them all (measured: 1.1-1.5 s
    of the ~7 s import on 2 cores, then ~0.3 s per full collection while
    training). Refcounting still frees every object; only cycles made in here
    and later dropped are never collected (a few MB at most)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# Keras imports these at its own import when they are installed, for features
# no vggtl command uses: keras.visualization's image gallery imports pyplot
# (~0.5 s, python -X importtime), and keras.wrappers' scikit-learn estimators
# import scikit-learn (~0.9 s of `import tensorflow, keras`'s ~4 s on 2
# cores; commands that fit scikit-learn models import it themselves).
# Each is a module of a top-level package.
DEFERRABLE = ("matplotlib.pyplot", "keras.wrappers")


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module nobody has used yet: ``import``
    statements return it at no cost, and the first attribute read imports the
    real module (which then replaces it in ``sys.modules``) and forwards."""

    def __getattr__(self, name):
        return getattr(_real_module(self), name)

    def __dir__(self):
        return dir(_real_module(self))


def _real_module(stub: _Deferred):
    if sys.modules.get(stub.__name__) is stub:
        del sys.modules[stub.__name__]
    return importlib.import_module(stub.__name__)


def defer_unused_imports() -> None:
    """Called in a command's process (:func:`vggtl.errors.cli_entry`): when
    :func:`load` imports Keras there, it first puts a :class:`_Deferred`
    stand-in in ``sys.modules`` for each of :data:`DEFERRABLE` that is
    installed and not imported yet, so Keras' import skips them and vggtl code
    that does use one (a plot) still gets the real module on first use. Nothing
    happens here: a command that never imports TensorFlow (predict through
    ONNX Runtime, ``runs``) looks for nothing. Not done for the Python API: a
    notebook's own ``import matplotlib.pyplot`` gets the real module, untouched."""
    global _defer_in_load
    _defer_in_load = True


def _stand_in_for_deferrable() -> None:
    for name in DEFERRABLE:
        package = importlib.util.find_spec(name.partition(".")[0])  # a top-level name: nothing imported
        if name in sys.modules or package is None:
            continue
        stub = _Deferred(name)
        # The real spec, found in the package's folders without importing the
        # package (for keras.wrappers that would import all of Keras, wrappers
        # included): importlib.util.find_spec(name) answers as without the stand-in.
        stub.__spec__ = importlib.machinery.PathFinder.find_spec(name, package.submodule_search_locations)
        sys.modules[name] = stub


def load():
    """Import TensorFlow and Keras and initialise the devices once, quietly
    (:func:`collections_paused`); returns the ``tensorflow`` module."""
    global _loaded
    if not _loaded:
        if _defer_in_load:
            _stand_in_for_deferrable()
        with filtered_stderr(), collections_paused():
            import keras  # noqa: F401 - every caller uses it next; imported here, uncollected
            import tensorflow as tf

            tf.config.list_physical_devices()  # "cuInit failed" is printed here
            # Python-side TF warnings (e.g. predict-function retracing when a
            # run evaluates several models) are advice for TF developers.
            tf.get_logger().setLevel("ERROR")
        _loaded = True
    import tensorflow as tf

    return tf

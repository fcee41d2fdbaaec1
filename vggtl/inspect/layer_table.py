"""Layer tables (and diagrams) of vggtl models: an artifact's ``model.keras``, or
the model ``train`` would build for a config (random backbone weights: shapes
and parameter counts do not depend on them)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np

from vggtl import config, data, tfquiet
from vggtl.backbones import build
from vggtl.backbones.resolve import random_weights
from vggtl.errors import DataError, VggtlError
from vggtl.training import artifact, heads

CONFIG_SUFFIXES = (".yaml", ".yml")
DIAGRAM_SUFFIXES = (".png", ".svg", ".pdf")
DIAGRAM_HINT = "the diagram needs pydot and Graphviz: pip install pydot  and  apt-get install graphviz (or your OS's graphviz package)"
DEFAULT_CLASSES = 2


# --------------------------------------------------------------------------- models


def count_classes(root) -> int | None:
    """Class folders under ``data.root`` (either layout), or None when it is not a directory."""
    root = Path(root)
    if not root.is_dir():
        return None
    try:
        split_dirs = data.detect_layout(root)
    except DataError:
        split_dirs = None  # a malformed tree: extract will say so; count its top folders
    return len(data.visible_subdirs(split_dirs["train"] if split_dirs else root))


def model_from_config(cfg: config.Config):
    """The end-to-end model ``train`` builds for ``cfg``, with random backbone weights.

    Returns:
        ``(model, n_classes, note)``; ``note`` says where ``n_classes`` came from.
    """
    found = count_classes(cfg.data.root)
    if found is not None and found >= 2:
        n_classes, note = found, f"{found} classes (class folders in {cfg.data.root})"
    else:
        n_classes = DEFAULT_CLASSES
        why = "does not exist" if found is None else f"has {found} class folder(s)"
        note = f"{n_classes} classes assumed (data.root {cfg.data.root} {why})"
    shape = cfg.spec.feature_shape(cfg.spec.head_layer)
    # Standardization statistics only change values, not shapes: neutral ones.
    pooled = heads.pool_numpy(np.zeros((1, *shape), np.float32), cfg.head.pooling).shape[1]
    stats = (np.zeros(pooled), np.ones(pooled)) if cfg.head.standardize else None
    head = heads.build_head(shape, n_classes, cfg.head, stats=stats)
    if cfg.head.probe:
        zeros = np.zeros(pooled, np.float32)
        probe = (np.zeros((pooled, n_classes), np.float32), np.zeros(n_classes, np.float32))
        head = heads.with_probe(head, cfg.head.pooling, (zeros, np.ones(pooled, np.float32)), probe)
    # Random backbone weights: shapes and counts do not depend on them.
    model = build.end_to_end_model(cfg.spec, random_weights(cfg.seed), head, f"vggtl_{cfg.name}", cfg.seed)
    return model, n_classes, note


def load_target(target: str):
    """``(model, description)`` for an artifact directory or a config file.

    Raises:
        VggtlError: ``target`` is neither.
    """
    path = Path(target)
    if path.is_dir():
        art = artifact.load(path)
        tfquiet.load()
        return art.load_model(), f"artifact {art.path} ({len(art.labels)} classes: {', '.join(art.labels)})"
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        cfg = config.load(path, check_exists=False)
        tfquiet.load()
        model, _, note = model_from_config(cfg)
        return model, f"config {path}: {note}; backbone weights not loaded (random init, shapes only)"
    if not path.exists():
        raise VggtlError(f"{target!r} does not exist; pass an artifact directory or a config file ({', '.join(CONFIG_SUFFIXES)})")
    raise VggtlError(
        f"{target!r} is neither an artifact directory nor a config file ({', '.join(CONFIG_SUFFIXES)})"
    )


# --------------------------------------------------------------------------- table


def _shape(layer) -> str:
    try:
        output = layer.output
    except Exception:  # noqa: BLE001 - layers used in several graphs have no single output
        return "multiple"
    shapes = [tuple(t.shape) for t in output] if isinstance(output, (list, tuple)) else [tuple(output.shape)]
    return ", ".join(str(s).replace("None", "?") for s in shapes)


def _trainable(layer) -> str:
    total = len(layer.weights)
    if total == 0:
        return "-"
    trainable = len(layer.trainable_weights)
    return "yes" if trainable == total else "no" if trainable == 0 else "partly"


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def layer_rows(model, depth: int = 0) -> list[tuple[str, str, str, int, str]]:
    """``(name, type, output shape, params, trainable)`` per layer, nested models expanded.

    Names of nested layers are indented by two spaces per level. ``trainable``
    is ``yes``, ``no``, ``partly`` (a model mixing both) or ``-`` (no weights).
    """
    import keras

    rows = []
    for layer in model.layers:
        rows.append(("  " * depth + layer.name, type(layer).__name__, _shape(layer), _count(layer.weights), _trainable(layer)))
        if isinstance(layer, keras.Model):
            rows.extend(layer_rows(layer, depth + 1))
    return rows


def format_table(model) -> list[str]:
    """The summary table of ``model`` with totals, as lines."""
    rows = layer_rows(model)
    header = ("layer", "type", "output shape", "params", "trainable")
    widths = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(3)]
    pwidth = max(len(header[3]), *(len(f"{r[3]:,}") for r in rows))

    def line(name, kind, shape, params, train):
        return f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {shape:<{widths[2]}}  {params:>{pwidth}}  {train}"

    out = [line(*header), "-" * (sum(widths) + pwidth + 8 + len(header[4]))]
    out += [line(n, k, s, f"{p:,}", t) for n, k, s, p, t in rows]
    total, trainable = _count(model.weights), _count(model.trainable_weights)
    out.append("-" * len(out[1]))
    out.append(f"total params: {total:,}   trainable: {trainable:,}   non-trainable: {total - trainable:,}")
    return out


# --------------------------------------------------------------------------- diagram


def diagram_available() -> bool:
    """True when ``keras.utils.plot_model`` can run: pydot importable and Graphviz's ``dot`` on PATH."""
    return importlib.util.find_spec("pydot") is not None and shutil.which("dot") is not None


def write_diagram(model, out) -> bool:
    """Draw ``model`` (nested models expanded, with shapes) to ``out``; False with a hint when impossible."""
    import keras

    if not diagram_available():
        print(f"note: no diagram written: {DIAGRAM_HINT}", file=sys.stderr)
        return False
    try:
        keras.utils.plot_model(model, to_file=str(out), show_shapes=True, show_layer_names=True, expand_nested=True)
    except ImportError:  # Keras' own check disagrees with ours (e.g. a broken pydot install)
        print(f"note: no diagram written: {DIAGRAM_HINT}", file=sys.stderr)
        return False
    print(f"diagram: {out}")
    return True


def check_diagram_path(value: str) -> Path:
    out = Path(value)
    if out.suffix.lower() not in DIAGRAM_SUFFIXES:
        raise VggtlError(f"--diagram {value!r}: the file name must end in {', '.join(DIAGRAM_SUFFIXES)}")
    if not out.parent.is_dir():
        raise VggtlError(f"--diagram {value!r}: directory {str(out.parent)!r} does not exist; create it first")
    return out


def print_summary(target: str, diagram: str | None = None) -> bool:
    """Print the layer table of an artifact's or a config's model; draw it to
    ``diagram`` when given. Returns False when the diagram could not be drawn."""
    out = check_diagram_path(diagram) if diagram is not None else None
    model, description = load_target(target)
    print(f"model {model.name}: {description}")
    print("\n".join(format_table(model)))
    return out is None or write_diagram(model, out)

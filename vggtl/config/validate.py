"""Checking a config: every value against its key's type and range
(:func:`build`), then the rules that span keys (:func:`check`) and the
tuning space (:func:`tune_space`). Nothing here changes what it checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any

from vggtl.config.schema import (
    NAMED_COLORS, NOT_TUNABLE, TUNABLE_CLASSES, TUNABLE_SECTIONS, Config, ExtractConfig, HeadConfig, SearchParam, key_fields,
)
from vggtl.errors import ConfigError

# --------------------------------------------------------------------------- one key at a time


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}.get(tp, str(tp))


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotation ``tp``; return it (ints widened to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is not None:  # Optional[...] / X | None
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # YAML's .nan / .inf pass every "low <= v <= high" test
            raise ConfigError(f"{where}: got {value!r}; expected a finite number")
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool, dict) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_range(value, meta, where: str):
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices is not None and value not in choices:
        allowed = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{where}: got {value!r}; allowed values: {allowed}")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (low is not None and v < low) or (high is not None and v > high):
                bound = (f"between {low} and {high}" if low is not None and high is not None
                         else f"at least {low}" if low is not None else f"at most {high}")
                raise ConfigError(f"{where}: got {v!r}; must be {bound}")


def unknown_key_message(key: str, known: list[str], where: str) -> str:
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
    return f"{where}: unknown key '{key}'.{did_you_mean} Known keys here: {', '.join(known)}"


def build(cls, mapping, prefix: str, source: str):
    """An instance of the schema class ``cls`` from a plain mapping: unknown
    keys, missing required keys, wrong types and out-of-range values refused,
    naming ``source`` and the dotted key; nothing else changed."""
    where_section = f"{source}: '{prefix.rstrip('.')}'" if prefix else source
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where_section}: expected a mapping of keys, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = key_fields(cls)
    for key in mapping:
        if key not in fields:
            raise ConfigError(unknown_key_message(str(key), list(fields), f"{source}: key '{prefix}{key}'"))
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}{name}"
        where = f"{source}: key '{dotted}'"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, mapping.get(name), f"{dotted}.", source)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in mapping:
            if required:
                raise ConfigError(f"{where} is required ({f.metadata.get('doc', '')})")
            continue
        if required and mapping[name] == "":  # --set data.root= would scan the working directory
            raise ConfigError(f"{where} is empty; it is required ({f.metadata.get('doc', '')})")
        value = _coerce(mapping[name], tp, where)
        _check_range(value, f.metadata, where)
        kwargs[name] = value
    return cls(**kwargs)



# --------------------------------------------------------------------------- across keys


def check(cfg: Config, source: str) -> None:
    """Cross-field rules the per-key schema cannot express; ``cfg`` is only read.

    Raises:
        ConfigError: naming ``source``, the key, the value and what to do.
    """
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name in (".", "..") or not cfg.name.isprintable():
        raise ConfigError(f"{source}: key 'name': got {cfg.name!r}; use a plain name without slashes, "
                          "line breaks or other control characters")
    # Rounded because 0.6 + 0.3 == 0.8999999999999999 in binary floating point.
    if round(cfg.data.split.val + cfg.data.split.test, 9) >= 0.9:
        raise ConfigError(
            f"{source}: keys 'data.split.val' + 'data.split.test' = "
            f"{cfg.data.split.val + cfg.data.split.test:g}; must leave at least 10% for training"
        )
    _check_extensions(cfg.data.extensions, source)
    parse_background(cfg.data.background, f"{source}: key 'data.background'")
    _check_devices(cfg.finetune.devices, f"{source}: key 'finetune.devices'")
    if cfg.extract.precision == "int8" and cfg.extract.runtime == "tensorflow":
        raise ConfigError(
            f"{source}: key 'extract.precision': int8 needs extract.runtime openvino or onnxruntime (got tensorflow, which "
            "has no int8 path here); set extract.runtime or use precision fp32"
        )
    _check_engine(cfg.extract, source)
    if cfg.backbone.mirror_average and cfg.finetune.blocks:
        # Phase 2 trains the top blocks on one pass of stored boundary maps; the mirror pass is not stored.
        raise ConfigError(
            f"{source}: key 'backbone.mirror_average': cannot be combined with finetune.blocks = {cfg.finetune.blocks}; "
            "set one of them off"
        )
    if cfg.predict.unknown.keep == 0:  # the schema's range is closed; a threshold keeping nothing is not one
        raise ConfigError(f"{source}: key 'predict.unknown.keep': got 0; allowed: a fraction above 0 and at most 1 "
                          "(e.g. 0.95), or null to turn unknown detection off")
    if cfg.train.folds == 1:
        raise ConfigError(f"{source}: key 'train.folds': got 1; use 0 (off) or at least 2 folds")
    if any(u < 1 for u in cfg.head.units):
        raise ConfigError(f"{source}: key 'head.units': got {cfg.head.units!r}; every width must be >= 1")
    tune_space(cfg.tune.space, source)


def normal_extension(ext: str) -> str:
    """``'JPG'`` / ``'.Jpg'`` -> ``'.jpg'`` (an empty entry stays empty, for :func:`check` to refuse)."""
    ext = ext.strip().lower()
    return ext if ext in ("", ".") or ext.startswith(".") else "." + ext


def _check_extensions(extensions: list[str], source: str) -> None:
    if any(normal_extension(ext) in ("", ".") for ext in extensions):
        # An empty extension would match every file name (or none), never what was meant.
        raise ConfigError(
            f"{source}: key 'data.extensions': got {extensions!r}; every entry must be like .jpg or png"
        )
    if not extensions:
        raise ConfigError(f"{source}: key 'data.extensions': got []; list at least one extension, e.g. [.jpg, .png]")


def parse_background(value, where: str = "key 'data.background'") -> tuple[int, int, int]:
    """``'white'`` or ``[r, g, b]`` -> an RGB triple of ints in [0, 255].

    Args:
        value: a color name from :data:`NAMED_COLORS` (any case) or 3 ints.
        where: prefix of the error message (file and key).

    Raises:
        ConfigError: for anything else.
    """
    if isinstance(value, str) and value.lower() in NAMED_COLORS:
        return NAMED_COLORS[value.lower()]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return tuple(value)
    raise ConfigError(
        f"{where}: got {value!r}; allowed: {', '.join(NAMED_COLORS)} or [r, g, b] with ints 0-255"
    )


def _check_devices(value, where: str) -> None:
    """``finetune.devices``: ``'auto'`` or an int from 1 to 64."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
        return
    raise ConfigError(f"{where}: got {value!r}; allowed: auto, or a number of devices from 1 to 64")


def _check_engine(extract: ExtractConfig, source: str) -> None:
    """``extract.engine`` / ``extract.ray_address`` fit together."""
    address = extract.ray_address
    if address is not None and not (address == "auto" or address.startswith("ray://") or re.fullmatch(r"[\w.-]+:\d+", address)):
        raise ConfigError(
            f"{source}: key 'extract.ray_address': got {address!r}; use null (start a local Ray instance), "
            "auto (the cluster in $RAY_ADDRESS or started on this machine), ray://HOST:10001 or HOST:6379"
        )
    if extract.engine == "ray" and extract.runtime != "tensorflow":
        # Each actor would convert the base into its own node's cache at once; not built yet.
        raise ConfigError(
            f"{source}: key 'extract.engine': ray runs the base with tensorflow (got extract.runtime "
            f"{extract.runtime!r}); set extract.runtime=tensorflow or extract.engine=local"
        )


def tune_space(space: dict, source: str = "config") -> list[SearchParam]:
    """The validated dimensions of ``tune.space``.

    Args:
        space: ``{dotted head.*/train.* key: [choices] | {low, high[, log]}}``.
        source: names the config file in errors.

    Raises:
        ConfigError: an unknown or untunable key, an empty choice list or
            range, a value the key itself would refuse, a malformed range.
    """
    if not space:
        raise ConfigError(f"{source}: key 'tune.space': got {{}}; give at least one key to search, e.g. head.dropout")
    return [_search_param(str(key), value, f"{source}: key 'tune.space.{key}'") for key, value in space.items()]


def _search_param(key: str, value, where: str) -> SearchParam:
    """One validated :class:`SearchParam` (see :func:`tune_space`)."""
    section, _, name = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(TUNABLE_CLASSES.get(section, HeadConfig))}
    known = [f"{s}.{f.name}" for s in TUNABLE_SECTIONS for f in dataclasses.fields(TUNABLE_CLASSES[s]) if f"{s}.{f.name}" not in NOT_TUNABLE]
    if section not in TUNABLE_SECTIONS or name not in fields or key in NOT_TUNABLE:
        raise ConfigError(unknown_key_message(key, known, where).replace("unknown key", "not a tunable key"))
    tp, meta = typing.get_type_hints(TUNABLE_CLASSES[section])[name], fields[name].metadata
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: got []; list at least one choice")
        for i, choice in enumerate(value):
            _check_range(_coerce(choice, tp, f"{where}[{i}]"), meta, f"{where}[{i}]")
            if key == "head.units" and any(u < 1 for u in choice):
                raise ConfigError(f"{where}[{i}]: got {choice!r}; every width must be >= 1")
        return SearchParam(key, choices=tuple(value))
    return _search_range(key, value, tp, meta, where)


def _search_range(key: str, value, tp, meta, where: str) -> SearchParam:
    """A ``{low, high[, log]}`` dimension of a numeric key."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: got {value!r}; expected a list of choices or a range {{low: ..., high: ...[, log: true]}}")
    if tp not in (int, float):
        raise ConfigError(f"{where}: a range needs a numeric key; list the choices instead, e.g. [a, b]")
    for extra in set(value) - {"low", "high", "log"}:
        raise ConfigError(unknown_key_message(str(extra), ["low", "high", "log"], f"{where}: key '{extra}'"))
    if "low" not in value or "high" not in value:
        raise ConfigError(f"{where}: got {value!r}; a range needs both low and high")
    low, high = (_coerce(value[end], tp, f"{where}.{end}") for end in ("low", "high"))
    for end, number in (("low", low), ("high", high)):
        _check_range(number, meta, f"{where}.{end}")
    log = _coerce(value.get("log", False), bool, f"{where}.log")
    if not low < high:
        raise ConfigError(f"{where}: empty range: low {low!r} must be below high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: got low {low!r}; a log range needs low > 0")
    return SearchParam(key, low=low, high=high, log=log, integer=tp is int)

"""Loading a config: YAML file, then overrides, then the schema's checks,
then the backbone resolved once.

:func:`load` is what commands and notebooks call; :func:`from_dict` does the
same for a mapping already in memory. Relative paths in a config
(``data.root``, ``cache.path``, ``output.dir``, ``backbone.weights`` when it
is a path) are relative to the working directory.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from vggtl.backbones import registry
from vggtl.backbones import spec as backbone_spec
import vggtl.config.validate as validate
from vggtl.config.schema import Config, key_fields
from vggtl.data import DecodeSettings
from vggtl.errors import ConfigError


def from_dict(mapping: dict, source: str = "config") -> Config:
    """A validated, immutable :class:`Config` from a plain mapping.

    Every value is checked against its key (:func:`validate.build`), the
    backbone's own image size and top layer fill in ``null``, extensions are
    written the one way the scanner compares them, the rules across keys are
    checked (:func:`validate.check`), and the backbone is resolved once into
    ``cfg.spec``.

    Raises:
        ConfigError: naming ``source``, the dotted key, the value and what is allowed.
    """
    cfg = _with_defaults_filled(validate.build(Config, mapping, "", source))
    validate.check(cfg, source)
    decode = DecodeSettings(cfg.data.image_size, cfg.data.resize, validate.parse_background(cfg.data.background), cfg.data.max_pixels)
    spec = backbone_spec.resolve(cfg.backbone, cfg.finetune.blocks, decode, source, channel_stats=cfg.predict.unknown.keep is not None)
    return dataclasses.replace(cfg, spec=spec)


def _with_defaults_filled(cfg: Config) -> Config:
    """``cfg`` with the keys whose default depends on others written out: a
    null ``data.image_size`` / ``backbone.layer`` becomes the backbone's own,
    extensions are lower-case with a dot. What is stored, digested and shown is
    the config as it runs."""
    arch = registry.get(cfg.backbone.name)
    data = dataclasses.replace(
        cfg.data,
        image_size=arch.default_size if cfg.data.image_size is None else cfg.data.image_size,
        extensions=[validate.normal_extension(ext) for ext in cfg.data.extensions],
    )
    backbone = dataclasses.replace(cfg.backbone, layer=arch.default_layer if cfg.backbone.layer is None else cfg.backbone.layer)
    return dataclasses.replace(cfg, data=data, backbone=backbone)


def with_overrides(cfg: Config, overrides: dict, source: str) -> Config:
    """A validated copy of ``cfg`` with ``{dotted key: value}`` overrides applied (``source`` names it in errors)."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides), source)


def check_paths(cfg: Config, source: str = "config") -> None:
    """Refuse paths that must exist (data root, weights file) before any work starts."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        problem = "is a file, not a directory" if root.exists() else "does not exist"
        raise ConfigError(
            f"{source}: key 'data.root': directory {str(root)!r} {problem} "
            f"(relative paths are relative to the working directory {os.getcwd()!r})"
        )
    if cfg.data.csv is not None and not Path(cfg.data.csv).is_file():
        problem = "is a directory, not a CSV file" if Path(cfg.data.csv).is_dir() else "does not exist"
        raise ConfigError(
            f"{source}: key 'data.csv': {cfg.data.csv!r} {problem} "
            f"(relative paths are relative to the working directory {os.getcwd()!r})"
        )
    weights = cfg.backbone.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ConfigError(
            f"{source}: key 'backbone.weights': file {weights!r} does not exist; "
            "use 'imagenet', null, or the path of a .h5 / .weights.h5 file"
        )


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e-4`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent:
    ``1e-4`` and ``1.0e3`` would load as *strings* and then fail the type
    check (``--set train.learning_rate=1e-4`` is the classic case). And a
    repeated key silently replaces the first one -- a whole section can
    vanish without a word.
    """

    # A config is a few levels deep and needs few aliases; bounds checked while
    # composing, before any alias is expanded (a "billion laughs" file stops here).
    MAX_ALIASES = 64
    MAX_DEPTH = 32
    MAX_NODES = 100_000  # after expanding every alias: 8 levels of 8 aliases would be 16 million

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > self.MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"its aliases expand to more than {self.MAX_NODES} values "
                                              "(an alias bomb?)", node.start_mark)
        return node

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases, self._depth = 0, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > self.MAX_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {self.MAX_ALIASES} aliases (*name): "
                                                  "a config never needs that many", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > self.MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {self.MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
        for key, n in collections.Counter(keys).items():
            if n > 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the later one would silently win)", node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict) -> int:
    """Values ``node`` stands for once every alias is expanded (an alias is the
    anchored node itself, so each node is counted once: ``memo``)."""
    if id(node) not in memo:
        children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else []
        items = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        memo[id(node)] = 1 + sum(_expanded_size(item, memo) for item in items)
    return memo[id(node)]


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=5'`` -> (['train', 'epochs'], 5). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key must be dotted names like head.dropout")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.split("."), value


def _override_items(overrides) -> list[tuple[str, list[str], Any]]:
    """``(how to name it, dotted parts, value)`` for ``KEY=VALUE`` strings or a
    ``{dotted key: value}`` mapping."""
    if isinstance(overrides, dict):
        items = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
                raise ConfigError(f"override {key!r}: the key must be dotted names like 'head.dropout'")
            items.append((f"override {key!r}", key.split("."), value))
        return items
    return [(f"--set {text!r}", *parse_override(text)) for text in overrides or []]


def apply_overrides(mapping: dict, overrides) -> dict:
    """Return a copy of ``mapping`` with the overrides applied.

    Args:
        mapping: the config as read from YAML.
        overrides: ``KEY=VALUE`` strings (``--set``; values parsed as YAML)
            or a ``{dotted key: value}`` mapping (values used as they are).
    """
    result = json.loads(json.dumps(mapping, default=str)) if mapping else {}
    for where, parts, value in _override_items(overrides):
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load(path: str | os.PathLike, overrides: list[str] | dict | None = None, check_exists: bool = True) -> Config:
    """Read, override and validate a config file.

    Args:
        path: YAML config file.
        overrides: ``KEY=VALUE`` strings with dotted keys (``train.epochs=5``,
            values parsed as YAML), or a mapping such as
            ``{"train.epochs": 5, "head.units": [128]}``; either way the
            values are then typed and checked by the schema.
        check_exists: also refuse a missing ``data.root`` or weights file.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: naming the file, dotted key, value and what is allowed.
    """
    source = str(path)
    mapping = apply_overrides(read_yaml(path), overrides or [])
    try:
        cfg = from_dict(mapping, source)
        if check_exists:
            check_paths(cfg, source)
    except ConfigError as exc:
        raise _blame_override(exc, source, overrides) from None
    return cfg


def _blame_override(exc: ConfigError, source: str, overrides) -> ConfigError:
    """``exc`` naming the override that set the key it is about, not the file
    (``--set head.unit=3`` is the user's typo, not the YAML's)."""
    message = str(exc)
    for where, parts, _ in _override_items(overrides):
        # the error may name the key or a section of it ('trian' for --set trian.epochs=3)
        named = any(f"key '{'.'.join(parts[:n])}'" in message for n in range(len(parts), 0, -1))
        if named and message.startswith(f"{source}: "):
            return ConfigError(f"{where} (over {source}): " + message[len(source) + 2:])
    return exc


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every key; used by docs/configuration.md and ``--help``."""
    rows = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in key_fields(cls).values():
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "(required)"
            rows.append((f"{prefix}{f.name}", json.dumps(default) if default != "(required)" else default, f.metadata.get("doc", "")))

    walk(Config, "")
    return rows

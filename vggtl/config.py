"""Typed, validated run configuration: YAML file + ``--set`` overrides.

One dataclass per config section, defaults in code. Every value coming from
a YAML file or a ``--set KEY=VALUE`` override goes through :func:`from_dict`,
which refuses unknown keys (suggesting the closest known one), wrong types
and out-of-range values with a message naming the file, the dotted key, the
value received and what is allowed -- before any work starts.

Relative paths in a config (``data.root``, ``cache.path``, ``output.dir``,
``backbone.weights`` when it is a path) are relative to the current working
directory, the directory commands are run from.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vggtl.backbones import registry
from vggtl.backbones.spec import Spec
from vggtl.data import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, RESIZE_POLICIES, DecodeSettings
from vggtl.errors import ConfigError

NAMED_COLORS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}


def _key(default=dataclasses.MISSING, *, choices=None, low=None, high=None, doc="", **kw):
    """A config field with validation metadata; mutable defaults via ``default_factory``."""
    meta = {"choices": choices, "low": low, "high": high, "doc": doc}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: list(value) if isinstance(value, list) else dict(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class SplitConfig:
    val: float = _key(0.15, low=0.0, high=0.9, doc="fraction of each class held out for validation")
    test: float = _key(0.15, low=0.0, high=0.9, doc="fraction of each class held out for test")
    seed: int | None = _key(
        None, low=0, high=2**31 - 1, doc="seed of the split; null = the run's seed (vary one with the other fixed)"
    )


@dataclass
class DataConfig:
    root: str = _key(doc="class-per-folder image tree, or a tree with train/ val/ test/ subfolders")
    csv: str | None = _key(
        None, doc="a CSV file with columns path,label[,split] (paths relative to data.root) instead of class folders"
    )
    split: SplitConfig = field(default_factory=SplitConfig)
    image_size: int | None = _key(
        None, low=32, high=1024, doc="square input side in pixels; null = the backbone's own (224, inception_v3: 299)"
    )
    extensions: list[str] = _key(list(IMAGE_EXTENSIONS), doc="file extensions scanned (case-insensitive)")
    background: Any = _key("white", doc="color alpha is composited over: white|black|gray or [r, g, b]")
    resize: str = _key(
        "stretch",
        choices=RESIZE_POLICIES,
        doc="stretch like Keras; center_crop the central square; pad: fit the whole image, aspect kept, padded with the background; trim_pad: crop away background margins first (clipart, product shots)",
    )
    max_pixels: int = _key(
        DEFAULT_MAX_PIXELS,
        low=1,
        high=DEFAULT_MAX_PIXELS,
        doc="images with more pixels are skipped as decompression bombs (at most Pillow's own ceiling, the default)",
    )


@dataclass
class BackboneConfig:
    name: str = _key(
        registry.DEFAULT, choices=tuple(registry.ARCHITECTURES), doc="convolutional base (ImageNet-pretrained)"
    )
    weights: str | None = _key("imagenet", doc="imagenet | path to a .h5/.weights.h5 file | null (random init)")
    layer: str | None = _key(
        None,
        doc="layer whose activations are cached; null = the backbone's top (vgg16: block5_pool); several joined bottom to top with '+' (block4_pool+block5_pool) are concatenated on the top one's grid; see README",
    )
    mirror_average: bool = _key(
        False,
        doc="features = the average of the image's and its left-right mirror image's maps (twice the extraction and prediction time; see docs/accuracy.md)",
    )


@dataclass
class CacheConfig:
    path: str = _key("experiments/cache", doc="directory holding the HDF5 feature stores")
    dtype: str = _key("float16", choices=("float16", "float32"), doc="stored feature precision")
    compression: str | None = _key(None, choices=(None, "lzf", "gzip"), doc="HDF5 chunk compression")


@dataclass
class ExtractConfig:
    batch_size: int = _key(16, low=1, high=1024, doc="images per forward pass")
    workers: int = _key(2, low=1, high=64, doc="engine local: parallel image decoders; engine ray: Ray actors running the base")
    engine: str = _key(
        "local", choices=("local", "ray"),
        doc="local: this process; ray: actors on a Ray cluster (optional extra vggtl[ray]; docs/scale-out.md)",
    )
    ray_address: str | None = _key(
        None, doc="engine ray: null = start a local Ray instance in-process; auto or ray://host:port = join a running cluster"
    )
    runtime: str = _key(
        "tensorflow", choices=("tensorflow", "openvino", "onnxruntime"),
        doc="what runs the frozen base: tensorflow, or the same model converted once to openvino / onnxruntime (optional extras)",
    )
    precision: str = _key(
        "fp32", choices=("fp32", "int8"),
        doc="int8: post-training quantization of the frozen base (openvino with NNCF, onnxruntime), calibrated on training images",
    )
    calibration_images: int = _key(100, low=1, high=100_000, doc="training images the int8 quantization is calibrated on")


@dataclass
class HeadConfig:
    pooling: str = _key(
        "avg",
        choices=("flatten", "avg", "max", "avgmax", "avg_sqrt", "max_sqrt", "avgmax_sqrt"),
        doc="how the 7x7x512 map becomes a vector (avgmax: both, concatenated; *_sqrt: then its square root, power normalisation)",
    )
    standardize: bool = _key(True, doc="standardize pooled features with training-set mean/variance")
    units: list[int] = _key([512], doc="hidden Dense layer widths (relu); [] for a linear softmax")
    dropout: float = _key(0.5, low=0.0, high=0.95, doc="dropout after each hidden layer (and before the softmax)")
    l2: float = _key(1e-3, low=0.0, high=1.0, doc="L2 penalty on Dense kernels")
    probe: bool = _key(
        True, doc="average the head's probabilities with a logistic-regression probe on the same pooled features (steadier on small data)"
    )


@dataclass
class TrainConfig:
    epochs: int = _key(100, low=1, high=10_000, doc="maximum epochs (early stopping usually ends sooner)")
    batch_size: int = _key(32, low=1, high=4096, doc="head training batch size")
    optimizer: str = _key("adam", choices=("adam", "sgd", "rmsprop", "adamw"), doc="optimizer")
    learning_rate: float = _key(1e-3, low=1e-7, high=10.0, doc="optimizer learning rate")
    early_stopping_patience: int = _key(
        10, low=0, high=10_000, doc="epochs without improvement of the validation cross-entropy before stopping; 0 = off"
    )
    min_delta: float = _key(
        1e-3, low=0.0, high=1.0, doc="smallest fall of the validation cross-entropy (no L2 term) that counts as an improvement"
    )
    folds: int = _key(0, low=0, high=20, doc="also cross-validate head and probe with this many stratified folds of train + val; 0 = off")
    class_weight: str = _key("balanced", choices=("balanced", "none"), doc="reweight classes by inverse frequency")
    temperature: bool = _key(
        False, doc="fit a temperature on the validation split after training and build it into the model (calibrated confidences)"
    )
    label_smoothing: float = _key(0.0, low=0.0, high=0.5, doc="label smoothing of the cross-entropy")


@dataclass
class FinetuneConfig:
    blocks: int = _key(
        0, low=0, high=4, doc="top blocks/stages of the backbone to fine-tune after the head: 0 = off, 1 = VGG block5, 2 = blocks 4-5, ..."
    )
    epochs: int = _key(30, low=1, high=10_000, doc="maximum fine-tuning epochs (phase 2)")
    optimizer: str = _key("sgd", choices=("adam", "sgd", "rmsprop", "adamw"), doc="phase-2 optimizer (sgd has momentum 0.9)")
    learning_rate: float = _key(1e-4, low=1e-8, high=1.0, doc="phase-2 learning rate; keep it low")
    early_stopping_patience: int = _key(5, low=0, high=10_000, doc="phase-2 epochs without val_loss improvement; 0 = off")
    batch_size: int = _key(16, low=1, high=4096, doc="phase-2 batch size (the global batch, split across devices)")
    devices: Any = _key(
        "auto", doc="phase-2 devices: auto (every GPU when 2+, else one) or N replicas (N GPUs, or the CPU split into N logical devices)"
    )


@dataclass
class AugmentConfig:
    views: int = _key(0, low=0, high=64, doc="augmented views stored per training image; 0 = off")
    horizontal_flip: bool = _key(True, doc="random left-right flip")
    vertical_flip: bool = _key(False, doc="random top-bottom flip")
    rotation: float = _key(15.0, low=0.0, high=180.0, doc="max rotation in degrees")
    zoom: float = _key(0.1, low=0.0, high=0.9, doc="max zoom in/out as a fraction")
    shear: float = _key(0.0, low=0.0, high=45.0, doc="max shear in degrees")
    width_shift: float = _key(0.1, low=0.0, high=0.9, doc="max horizontal shift as a fraction of the width")
    height_shift: float = _key(0.1, low=0.0, high=0.9, doc="max vertical shift as a fraction of the height")
    brightness: float = _key(0.1, low=0.0, high=0.9, doc="max brightness change as a fraction")


@dataclass
class BaselineConfig:
    scratch: bool = _key(False, doc="also train the tutorials' small CNN from scratch on the same split, for the report")
    image_size: int = _key(64, low=16, high=512, doc="input side of the from-scratch CNN")
    epochs: int = _key(100, low=1, high=10_000, doc="maximum epochs of the from-scratch CNN")
    patience: int = _key(15, low=1, high=10_000, doc="its early-stopping patience on val_loss")


# What `vggtl tune` searches unless `tune.space` says otherwise (measured on
# clipart8: pooling and dropout move the cross-validated accuracy most).
DEFAULT_TUNE_SPACE = {
    "head.pooling": ["avg", "max", "avgmax", "avg_sqrt", "avgmax_sqrt"],
    "head.units": [[], [256], [512], [1024]],
    "head.dropout": {"low": 0.0, "high": 0.8},
    "head.l2": {"low": 1e-5, "high": 1e-1, "log": True},
    "head.probe": [True, False],
    "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "train.label_smoothing": {"low": 0.0, "high": 0.2},
}
TUNABLE_SECTIONS = ("head", "train")
_SECTIONS = {"head": HeadConfig, "train": TrainConfig}
NOT_TUNABLE = ("train.folds",)


@dataclass
class TuneConfig:
    trials: int = _key(30, low=1, high=10_000, doc="trials of `vggtl tune` (--trials)")
    folds: int = _key(5, low=2, high=20, doc="stratified folds of train + val each trial is cross-validated on")
    jobs: int = _key(0, low=0, high=64, doc="trials run in parallel processes; 0 = one per CPU core")
    seed: int | None = _key(None, low=0, high=2**31 - 1, doc="seed of the sampler; null = the run's seed")
    space: dict = _key(
        DEFAULT_TUNE_SPACE,
        doc="dotted head.*/train.* keys -> a list of choices or {low, high, log}; replaces the default space as a whole",
    )


@dataclass(frozen=True)
class SearchParam:
    """One dimension of the tuning space: ``choices``, or a ``low``..``high`` range."""

    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False


@dataclass
class AuditConfig:
    near_duplicate: float = _key(
        0.98, low=0.0, high=1.0,
        doc="cosine similarity of avg-pooled cached features at or above which two images in different splits are listed as near-duplicates",
    )


@dataclass
class OutputConfig:
    dir: str = _key("experiments", doc="where versioned artifacts are written")


@dataclass
class Config:
    name: str = _key(doc="run name; artifacts go to <output.dir>/<name>/v<N>/")
    seed: int = _key(1337, low=0, high=2**31 - 1, doc="seed for the split, initialisation and training")
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # Not a config key: the backbone resolved from the keys above, set once by
    # from_dict; every stage reads names, sizes and layer roles from it.
    spec: Spec | None = field(default=None, init=False, repr=False, compare=False, metadata={"derived": True})

    def to_dict(self) -> dict:
        """The config keys as plain data (what config.yaml and digests hold)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if not f.metadata.get("derived")}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def split_seed(self) -> int:
        """The seed the split is made with: ``data.split.seed``, else ``seed``."""
        return self.seed if self.data.split.seed is None else self.data.split.seed

    @property
    def tune_seed(self) -> int:
        """The seed of the tuning sampler: ``tune.seed``, else ``seed``."""
        return self.seed if self.tune.seed is None else self.tune.seed

    def with_overrides(self, overrides: dict, source: str) -> "Config":
        """A validated copy with ``{dotted key: value}`` overrides applied (``source`` names it in errors)."""
        return from_dict(apply_overrides(self.to_dict(), overrides), source)

    def digest(self) -> str:
        """sha256 of the resolved config (stable key order)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# --------------------------------------------------------------------------- parsing


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    if origin in (typing.Union, getattr(__import__('types'), 'UnionType', None)):
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
                raise ConfigError(f"{where}: got {v!r}; must be between {low} and {high}")


def _unknown_key_message(key: str, known: list[str], where: str) -> str:
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
    return f"{where}: unknown key '{key}'.{did_you_mean} Known keys here: {', '.join(known)}"


def _build(cls, mapping, prefix: str, source: str):
    where_section = f"{source}: '{prefix.rstrip('.')}'" if prefix else source
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where_section}: expected a mapping of keys, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in mapping:
        if key not in fields:
            raise ConfigError(_unknown_key_message(str(key), list(fields), f"{source}: key '{prefix}{key}'"))
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}{name}"
        where = f"{source}: key '{dotted}'"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, mapping.get(name), f"{dotted}.", source)
            continue
        if name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where} is required ({f.metadata.get('doc', '')})")
            continue
        value = _coerce(mapping[name], tp, where)
        _check_range(value, f.metadata, where)
        kwargs[name] = value
    return cls(**kwargs)


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


def _validate_semantics(cfg: Config, source: str) -> None:
    """Cross-field checks the per-key schema cannot express."""
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        raise ConfigError(f"{source}: key 'name': got {cfg.name!r}; use a plain name without slashes")
    # Rounded because 0.6 + 0.3 == 0.8999999999999999 in binary floating point.
    if round(cfg.data.split.val + cfg.data.split.test, 9) >= 0.9:
        raise ConfigError(
            f"{source}: keys 'data.split.val' + 'data.split.test' = "
            f"{cfg.data.split.val + cfg.data.split.test:g}; must leave at least 10% for training"
        )
    exts = []
    for ext in cfg.data.extensions:
        ext = ext.strip().lower()
        if ext in ("", "."):
            # An empty extension would match every file name (or none), never what was meant.
            raise ConfigError(
                f"{source}: key 'data.extensions': got {cfg.data.extensions!r}; every entry must be like .jpg or png"
            )
        exts.append(ext if ext.startswith(".") else "." + ext)
    if not exts:
        raise ConfigError(f"{source}: key 'data.extensions': got []; list at least one extension, e.g. [.jpg, .png]")
    cfg.data.extensions = exts
    parse_background(cfg.data.background, f"{source}: key 'data.background'")
    _check_devices(cfg.finetune.devices, f"{source}: key 'finetune.devices'")
    _resolve_backbone(cfg, source)
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
    if cfg.train.folds == 1:
        raise ConfigError(f"{source}: key 'train.folds': got 1; use 0 (off) or at least 2 folds")
    if any(u < 1 for u in cfg.head.units):
        raise ConfigError(f"{source}: key 'head.units': got {cfg.head.units!r}; every width must be >= 1")
    tune_space(cfg.tune.space, source)


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
    fields = {f.name: f for f in dataclasses.fields(_SECTIONS.get(section, HeadConfig))}
    known = [f"{s}.{f.name}" for s in TUNABLE_SECTIONS for f in dataclasses.fields(_SECTIONS[s]) if f"{s}.{f.name}" not in NOT_TUNABLE]
    if section not in TUNABLE_SECTIONS or name not in fields or key in NOT_TUNABLE:
        raise ConfigError(_unknown_key_message(key, known, where).replace("unknown key", "not a tunable key"))
    tp, meta = typing.get_type_hints(_SECTIONS[section])[name], fields[name].metadata
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
        raise ConfigError(_unknown_key_message(str(extra), ["low", "high", "log"], f"{where}: key '{extra}'"))
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


def _resolve_backbone(cfg: Config, source: str) -> None:
    """Fill in the backbone's own image size and layer where the config left
    them null, check them (and finetune.blocks) against that backbone, and
    set ``cfg.spec``."""
    arch = registry.get(cfg.backbone.name)
    if cfg.data.image_size is None:
        cfg.data.image_size = arch.default_size
    if cfg.backbone.layer is None:
        cfg.backbone.layer = arch.default_layer
    boundary = _check_layers(cfg, arch, source)
    decode = DecodeSettings(cfg.data.image_size, cfg.data.resize, parse_background(cfg.data.background), cfg.data.max_pixels)
    spec = Spec(arch, cfg.backbone.layer, boundary, decode, cfg.backbone.mirror_average)
    smallest = max(arch.min_size, *(arch.smallest_input(layer) for layer in spec.stored_layers))
    if cfg.data.image_size < smallest:
        raise ConfigError(
            f"{source}: key 'data.image_size': got {cfg.data.image_size}; {arch.name} up to {cfg.backbone.layer} "
            f"needs at least {smallest} (its own size is {arch.default_size})"
        )
    _check_joined_grid(spec, source)
    cfg.spec = spec


def _check_layers(cfg: Config, arch: registry.Architecture, source: str) -> str | None:
    """``backbone.layer`` (one layer, or several joined with '+') and
    ``finetune.blocks`` must exist for ``arch`` and fit each other; returns the
    fine-tuning boundary layer (None when fine-tuning is off)."""
    name, layer, order = arch.name, cfg.backbone.layer, list(arch.layers)
    parts = registry.layer_parts(layer)
    example = f"{arch.finetune_boundaries[0]}{registry.JOIN}{arch.default_layer}"
    for part in parts:
        if part not in arch.layers:
            raise ConfigError(
                f"{source}: key 'backbone.layer': got {layer!r}; allowed for {name}: {', '.join(order)}, "
                f"or several of them joined bottom to top with '{registry.JOIN}' (e.g. {example})"
            )
    positions = [order.index(part) for part in parts]
    if positions != sorted(set(positions)):
        raise ConfigError(
            f"{source}: key 'backbone.layer': got {layer!r}; join distinct layers from bottom to top, e.g. {example}"
        )
    if cfg.finetune.blocks > len(arch.finetune_boundaries):
        raise ConfigError(
            f"{source}: key 'finetune.blocks': got {cfg.finetune.blocks}; {name} allows 0-{len(arch.finetune_boundaries)}"
        )
    if cfg.finetune.blocks and parts[-1] != arch.default_layer:
        raise ConfigError(
            f"{source}: key 'finetune.blocks': fine-tuning needs the head on {arch.default_layer}, "
            f"but 'backbone.layer' is {layer!r}; set backbone.layer: {arch.default_layer} (or end it with it) or finetune.blocks: 0"
        )
    boundary = arch.finetune_boundaries[cfg.finetune.blocks - 1] if cfg.finetune.blocks else None
    if boundary and positions[0] < order.index(boundary):
        raise ConfigError(
            f"{source}: key 'backbone.layer': {parts[0]!r} is below the fine-tuning boundary {boundary!r} of "
            f"finetune.blocks: {cfg.finetune.blocks}, so fine-tuning could not reach it; join layers from {boundary} up, "
            "or fine-tune more blocks"
        )
    return boundary


def _check_joined_grid(spec: Spec, source: str) -> None:
    """Every lower part of a joined ``backbone.layer`` must pool exactly onto the top part's grid."""
    parts = registry.layer_parts(spec.head_layer)
    top = spec.feature_shape(parts[-1])[0]
    for part in parts[:-1]:
        side = spec.feature_shape(part)[0]
        if registry.pool_onto(side, top) is None:
            raise ConfigError(
                f"{source}: key 'backbone.layer': at data.image_size {spec.image_size}, {part}'s {side}x{side} map "
                f"does not pool evenly onto {parts[-1]}'s {top}x{top}; use another data.image_size "
                f"(e.g. {spec.arch.default_size}) or other layers"
            )


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
        raise ConfigError(
            f"{source}: key 'data.csv': file {cfg.data.csv!r} does not exist "
            f"(relative paths are relative to the working directory {os.getcwd()!r})"
        )
    weights = cfg.backbone.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ConfigError(
            f"{source}: key 'backbone.weights': file {weights!r} does not exist; "
            "use 'imagenet', null, or the path of a .h5 / .weights.h5 file"
        )


def from_dict(mapping: dict, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    cfg = _build(Config, mapping, "", source)
    _validate_semantics(cfg, source)
    return cfg


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e-4`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent:
    ``1e-4`` and ``1.0e3`` would load as *strings* and then fail the type
    check (``--set train.learning_rate=1e-4`` is the classic case). And a
    repeated key silently replaces the first one -- a whole section can
    vanish without a word.
    """

    def construct_mapping(self, node, deep=False):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"]
        for key, n in collections.Counter(keys).items():
            if n > 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the later one would silently win)", node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


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
    cfg = from_dict(mapping, source)
    if check_exists:
        check_paths(cfg, source)
    return cfg


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every key; used by the README and ``--help``."""
    rows = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:  # derived, not a key (Config.spec)
                continue
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


# --------------------------------------------------------------------------- command line

LAST_EXTRACT = Path(".vggtl") / "last-extract.json"


def add_arguments(parser, config_required: bool) -> None:
    """The CONFIG positional and repeatable ``--set KEY=VALUE`` shared by commands."""
    parser.add_argument(
        "config",
        nargs=None if config_required else "?",
        help="YAML config file" + ("" if config_required else " (default: the config of the last extract run here)"),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 (repeatable; values parsed as YAML)",
    )


def add_shortcut(parser, flag: str, key: str, metavar: str, help: str) -> None:
    """An integer option ``flag VALUE`` meaning ``--set key=VALUE``; it wins over
    ``--set`` of the same key (see :func:`from_args`)."""
    import argparse

    class Shortcut(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            namespace.shortcuts = [*getattr(namespace, "shortcuts", []), f"{key}={value}"]

    parser.add_argument(flag, type=int, metavar=metavar, action=Shortcut, help=f"{help} (same as --set {key}={metavar})")


def from_args(args, log=print) -> Config:
    """Config from parsed arguments; without CONFIG, reuse the last extract's config."""
    overrides = args.set + getattr(args, "shortcuts", [])  # shortcuts last: they win
    if args.config:
        return load(args.config, overrides)
    if not LAST_EXTRACT.is_file():
        raise ConfigError(
            "no CONFIG given and no extract has run in this directory "
            f"({LAST_EXTRACT} not found); pass a config file, e.g. configs/demo.yaml"
        )
    try:
        last = json.loads(LAST_EXTRACT.read_text())
        mapping, source = last["resolved"], last["config_path"]
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: valid JSON but not an object
        raise ConfigError(f"{LAST_EXTRACT} is unreadable; pass a config file explicitly") from None
    extra = f" with --set {' '.join(last.get('overrides', []))}" if last.get("overrides") else ""
    log(f"using the config of the last extract in this directory: {source}{extra}")
    cfg = from_dict(apply_overrides(mapping, overrides), f"{source} (via {LAST_EXTRACT})")
    check_paths(cfg, source)
    return cfg


def remember_last_extract(cfg: Config, config_path: str, overrides: list[str]) -> None:
    """Record ``cfg`` so ``train`` without CONFIG can reuse it (best effort:
    a working directory vggtl cannot write only loses that convenience)."""
    tmp = LAST_EXTRACT.with_suffix(f".tmp{os.getpid()}")
    try:
        LAST_EXTRACT.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps({"config_path": str(config_path), "overrides": overrides, "resolved": cfg.to_dict()}, indent=1))
        os.replace(tmp, LAST_EXTRACT)
    except OSError:
        tmp.unlink(missing_ok=True)

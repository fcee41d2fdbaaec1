"""Typed, validated, immutable run configuration: YAML file + overrides.

Three parts, one job each:

- :mod:`vggtl.config.schema` -- the keys: one frozen dataclass per section,
  each field with its default, its allowed values and its doc;
- :mod:`vggtl.config.validate` -- the checks: each value against its key,
  then the rules across keys; they never change what they check;
- :mod:`vggtl.config.load` -- YAML, ``--set`` / dict overrides, and the
  backbone resolved once into ``cfg.spec`` (its layer rules live in
  :mod:`vggtl.backbones.spec`).

Every value from a file or an override is refused, before any work starts,
when the key is unknown (the closest known one suggested), the type is wrong
or the value is out of range, with a message naming the file, the dotted key,
the value received and what is allowed. The command-line side (the CONFIG
argument, ``--set``, the last extract's config) lives in :mod:`vggtl.cli`.
"""

from vggtl.config.load import (
    apply_overrides, check_paths, describe_keys, from_dict, load, parse_override, read_yaml, with_overrides,
)
from vggtl.config.schema import (
    DEFAULT_TUNE_SPACE, NAMED_COLORS, NOT_TUNABLE, TUNABLE_SECTIONS, AugmentConfig, BackboneConfig, BaselineConfig,
    CacheConfig, Config, DataConfig, ExtractConfig, FinetuneConfig, HeadConfig, SearchParam, TrainConfig,
)
from vggtl.config.validate import parse_background, tune_space
from vggtl.data import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

__all__ = [
    "AugmentConfig", "BackboneConfig", "BaselineConfig", "CacheConfig", "Config", "DataConfig", "DEFAULT_MAX_PIXELS",
    "DEFAULT_TUNE_SPACE", "ExtractConfig", "FinetuneConfig", "HeadConfig", "IMAGE_EXTENSIONS", "NAMED_COLORS",
    "NOT_TUNABLE", "SearchParam", "TUNABLE_SECTIONS", "TrainConfig", "apply_overrides", "check_paths", "describe_keys",
    "from_dict", "load", "parse_background", "parse_override", "read_yaml", "tune_space", "with_overrides",
]

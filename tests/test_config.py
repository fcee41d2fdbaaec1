"""Tests for vggtl.config: schema, validation messages, ``--set`` overrides, CLI glue.

Everything here is pure Python + YAML on tiny files in ``tmp_path``; no
images are decoded and TensorFlow is never imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest
import yaml

from vggtl import cli, config
from vggtl.config import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Config
from vggtl.errors import ConfigError

from conftest import write_config


@pytest.fixture
def root(tmp_path):
    """An (empty) data root: config checks only need the directory to exist."""
    path = tmp_path / "images"
    path.mkdir()
    return path


def minimal(root, **sections) -> dict:
    """The smallest valid mapping, with sections merged in (dicts update, others replace)."""
    mapping = {"name": "t", "data": {"root": str(root)}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(mapping.get(key), dict):
            mapping[key] = {**mapping[key], **value}
        else:
            mapping[key] = value
    return mapping


def write_yaml(path, mapping) -> str:
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def leaves(mapping: dict, prefix: str = "") -> dict:
    """Flatten nested config sections to ``{'a.b': value}`` (a mapping-valued key, tune.space, is one leaf)."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "tune.space":
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parser(config_required=False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    cli.add_config_arguments(p, config_required=config_required)
    return p


# --------------------------------------------------------------------------- defaults


def test_defaults_of_a_minimal_config(root):
    cfg = config.from_dict(minimal(root))
    assert cfg.name == "t" and cfg.seed == 1337
    assert cfg.data.root == str(root)
    assert (cfg.data.split.val, cfg.data.split.test) == (0.15, 0.15)
    assert cfg.data.image_size == 224
    assert cfg.data.extensions == list(IMAGE_EXTENSIONS)
    assert cfg.data.background == "white" and cfg.spec.decode.background == (255, 255, 255)
    assert cfg.data.resize == "stretch"
    assert cfg.data.max_pixels == DEFAULT_MAX_PIXELS
    assert (cfg.backbone.name, cfg.backbone.weights, cfg.backbone.layer) == ("vgg16", "imagenet", "block5_pool")
    assert (cfg.cache.path, cfg.cache.dtype, cfg.cache.compression) == ("experiments/cache", "float16", None)
    assert (cfg.extract.batch_size, cfg.extract.workers) == (16, 2)
    assert (cfg.head.pooling, cfg.head.units, cfg.head.dropout, cfg.head.l2) == ("avg", [512], 0.5, 0.001)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.optimizer, t.learning_rate) == (100, 32, "adam", 1e-3)
    assert (t.early_stopping_patience, t.class_weight, t.label_smoothing) == (10, "balanced", 0.0)
    assert cfg.output.dir == "experiments"


def test_mutable_defaults_are_not_shared(root):
    a = config.from_dict(minimal(root))
    b = config.from_dict(minimal(root))
    a.head.units.append(8)
    a.data.extensions.append(".xyz")
    assert b.head.units == [512]
    assert ".xyz" not in b.data.extensions
    assert Config.__dataclass_fields__["head"].default_factory().units == [512]


def test_load_reads_values_from_the_file(tmp_path, root):
    path = write_config(tmp_path / "c.yaml", root, tmp_path, train={"epochs": 5, "optimizer": "sgd"}, head={"units": [16]})
    written = leaves(yaml.safe_load(path.read_text()))
    cfg = config.load(path)
    assert cfg.train.epochs == 5 and cfg.train.optimizer == "sgd" and cfg.head.units == [16]
    loaded = leaves(cfg.to_dict())
    for key, value in written.items():
        assert loaded[key] == value, key
    # untouched keys keep their defaults
    assert cfg.head.pooling == "avg" and cfg.extract.workers == 2


def test_ints_are_widened_to_float_for_float_keys(root):
    cfg = config.from_dict(minimal(root, head={"dropout": 0, "l2": 1}))
    assert cfg.head.dropout == 0.0 and isinstance(cfg.head.dropout, float)
    assert isinstance(cfg.head.l2, float)


def test_null_section_means_defaults(root):
    cfg = config.from_dict(minimal(root, train=None, head=None))
    assert cfg.train.epochs == 100 and cfg.head.units == [512]


def test_round_trips_through_to_dict_to_yaml_and_save(tmp_path, root):
    cfg = config.from_dict(minimal(root, data={"background": [1, 2, 3], "resize": "center_crop"}, head={"units": []}))
    assert config.from_dict(cfg.to_dict()) == cfg
    assert config.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    (tmp_path / "saved.yaml").write_text(cfg.to_yaml())
    assert config.load(tmp_path / "saved.yaml") == cfg
    assert config.load(tmp_path / "saved.yaml").spec == cfg.spec


def test_digest_is_stable_and_tracks_every_value(root):
    a = config.from_dict(minimal(root))
    assert a.digest() == config.from_dict(minimal(root)).digest()
    assert re.fullmatch(r"[0-9a-f]{64}", a.digest())
    assert config.from_dict(minimal(root, train={"epochs": 99})).digest() != a.digest()
    assert config.from_dict(minimal(root, data={"split": {"val": 0.2}})).digest() != a.digest()


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "sections, pattern",
    [
        ({"trian": {"epochs": 5}}, r"key 'trian': unknown key 'trian'\. Did you mean 'train'\?"),
        ({"sed": 3}, r"unknown key 'sed'\. Did you mean 'seed'\?"),
        ({"train": {"epoch": 5}}, r"key 'train\.epoch': unknown key 'epoch'\. Did you mean 'epochs'\?"),
        ({"head": {"dropuot": 0.1}}, r"key 'head\.dropuot'.*Did you mean 'dropout'\?"),
        ({"data": {"split": {"vall": 0.1}}}, r"key 'data\.split\.vall'.*Did you mean 'val'\?"),
    ],
)
def test_unknown_key_is_refused_with_a_suggestion(tmp_path, root, sections, pattern):
    path = write_yaml(tmp_path / "c.yaml", minimal(root, **sections))
    with pytest.raises(ConfigError, match=pattern) as info:
        config.load(path)
    assert str(info.value).startswith(path)  # names the file


def test_unknown_key_without_close_match_lists_known_keys(root):
    with pytest.raises(ConfigError, match=r"unknown key 'zzzz'\. Known keys here: epochs, batch_size") as info:
        config.from_dict(minimal(root, train={"zzzz": 1}))
    assert "Did you mean" not in str(info.value)


# --------------------------------------------------------------------------- types, ranges, choices


@pytest.mark.parametrize(
    "sections, pattern",
    [
        ({"train": {"epochs": "5"}}, r"key 'train\.epochs': expected an integer, got '5' \(str\)"),
        ({"train": {"epochs": True}}, r"key 'train\.epochs': expected an integer, got True \(bool\)"),
        ({"train": {"epochs": 5.0}}, r"key 'train\.epochs': expected an integer, got 5\.0 \(float\)"),
        ({"seed": None}, r"key 'seed': expected an integer, got None"),
        ({"head": {"dropout": "high"}}, r"key 'head\.dropout': expected a number, got 'high'"),
        ({"head": {"dropout": False}}, r"key 'head\.dropout': expected a number, got False"),
        ({"head": {"units": [16, "a"]}}, r"key 'head\.units'\[1\]: expected an integer, got 'a'"),
        ({"head": {"units": [16, True]}}, r"key 'head\.units'\[1\]: expected an integer, got True"),
        ({"head": {"units": 16}}, r"key 'head\.units': expected a list of int, got 16"),
        ({"data": {"extensions": ".jpg"}}, r"key 'data\.extensions': expected a list of str, got '\.jpg'"),
        ({"data": {"extensions": [".jpg", 3]}}, r"key 'data\.extensions'\[1\]: expected a string, got 3"),
        ({"name": 5}, r"key 'name': expected a string, got 5"),
        ({"backbone": {"weights": 5}}, r"key 'backbone\.weights': expected a string or null, got 5"),
        ({"data": "pictures"}, r"'data': expected a mapping of keys, got 'pictures'"),
        ({"data": {"root": "x", "split": [0.1, 0.1]}}, r"'data\.split': expected a mapping of keys"),
    ],
)
def test_wrong_types_are_refused(root, sections, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config.from_dict(minimal(root, **sections))


@pytest.mark.parametrize(
    "sections, pattern",
    [
        ({"data": {"image_size": 16}}, r"key 'data\.image_size': got 16; must be between 32 and 1024"),
        ({"data": {"image_size": 2048}}, r"key 'data\.image_size': got 2048; must be between 32 and 1024"),
        ({"data": {"split": {"val": -0.1}}}, r"key 'data\.split\.val': got -0\.1; must be between 0\.0 and 0\.9"),
        ({"data": {"split": {"test": 0.95}}}, r"key 'data\.split\.test': got 0\.95"),
        ({"data": {"max_pixels": 0}}, r"key 'data\.max_pixels': got 0; must be between 1 and"),
        # Pillow refuses bigger images itself, so the key can only lower its ceiling.
        ({"data": {"max_pixels": DEFAULT_MAX_PIXELS + 1}}, rf"key 'data\.max_pixels': got {DEFAULT_MAX_PIXELS + 1}"),
        ({"seed": -1}, r"key 'seed': got -1; must be between 0 and"),
        ({"extract": {"workers": 0}}, r"key 'extract\.workers': got 0; must be between 1 and 64"),
        ({"head": {"dropout": 0.99}}, r"key 'head\.dropout': got 0\.99; must be between 0\.0 and 0\.95"),
        ({"train": {"learning_rate": 0}}, r"key 'train\.learning_rate': got 0\.0; must be between 1e-07 and 10\.0"),
        ({"train": {"epochs": 0}}, r"key 'train\.epochs': got 0"),
        ({"head": {"units": [16, 0]}}, r"key 'head\.units': got \[16, 0\]; every width must be >= 1"),
    ],
)
def test_out_of_range_values_are_refused(root, sections, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config.from_dict(minimal(root, **sections))


def test_range_bounds_are_inclusive(root):
    cfg = config.from_dict(
        minimal(root, data={"image_size": 32, "max_pixels": DEFAULT_MAX_PIXELS}, train={"early_stopping_patience": 0})
    )
    assert cfg.data.image_size == 32 and cfg.train.early_stopping_patience == 0


@pytest.mark.parametrize(
    "sections, pattern",
    [
        ({"data": {"resize": "crop"}}, r"key 'data\.resize': got 'crop'; allowed values: stretch, center_crop, pad, trim_pad"),
        (
            {"backbone": {"mirror_average": True}, "finetune": {"blocks": 1}},
            r"key 'backbone\.mirror_average': cannot be combined with finetune\.blocks = 1",
        ),
        ({"backbone": {"mirror_average": "yes"}}, r"key 'backbone\.mirror_average'"),
        ({"head": {"pooling": "sum"}}, r"key 'head\.pooling': got 'sum'; allowed values: flatten, avg, max"),
        ({"cache": {"compression": "zip"}}, r"key 'cache\.compression': got 'zip'; allowed values: null, lzf, gzip"),
        ({"cache": {"dtype": "float64"}}, r"key 'cache\.dtype': got 'float64'"),
        ({"train": {"optimizer": "Adam"}}, r"key 'train\.optimizer': got 'Adam'; allowed values: adam, sgd"),
        ({"backbone": {"name": "resnet18"}}, r"key 'backbone\.name': got 'resnet18'; allowed values: vgg16, vgg19, resnet50, inception_v3, mobilenet_v2"),
        ({"backbone": {"layer": "block6_pool"}}, r"key 'backbone\.layer': got 'block6_pool'; allowed for vgg16: block1_pool"),
        ({"backbone": {"width": 0.5}}, r"key 'backbone\.width': got 0\.5 with backbone\.weights 'imagenet'; pretrained "
                                       r"weights exist for width 1\.0 only"),
        ({"backbone": {"width": 0.5, "weights": None, "name": "resnet50"}},
         r"key 'backbone\.width': got 0\.5; only vgg16, vgg19 can be narrowed \(resnet50: 1\.0\)"),
        ({"backbone": {"width": 0, "weights": None}}, r"key 'backbone\.width': got 0\.0; must be between 0\.01 and 1\.0"),
        ({"backbone": {"width": 2, "weights": None}}, r"key 'backbone\.width': got 2\.0; must be between 0\.01 and 1\.0"),
    ],
)
def test_values_outside_choices_are_refused(root, sections, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config.from_dict(minimal(root, **sections))


def test_valid_choices_are_accepted(root):
    cfg = config.from_dict(
        minimal(root, cache={"compression": "gzip", "dtype": "float32"}, backbone={"layer": "block4_pool"}, head={"pooling": "flatten"})
    )
    assert (cfg.cache.compression, cfg.cache.dtype, cfg.backbone.layer, cfg.head.pooling) == ("gzip", "float32", "block4_pool", "flatten")
    assert config.from_dict(minimal(root, cache={"compression": None})).cache.compression is None


# --------------------------------------------------------------------------- required keys, names


def test_missing_name_is_required(root):
    with pytest.raises(ConfigError, match=r"key 'name' is required \(run name"):
        config.from_dict({"data": {"root": str(root)}}, "my.yaml")


@pytest.mark.parametrize("data", [{"image_size": 64}, None, {}])
def test_missing_data_root_is_required(data):
    mapping = {"name": "t"} if data is None else {"name": "t", "data": data}
    with pytest.raises(ConfigError, match=r"my\.yaml: key 'data\.root' is required \(class-per-folder"):
        config.from_dict(mapping, "my.yaml")


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", ".", ".."])
def test_names_that_are_not_plain_are_refused(root, name):
    message = r"key 'name' is empty; it is required" if name == "" else r"key 'name': got .*; use a plain name without slashes"
    with pytest.raises(ConfigError, match=message):
        config.from_dict(minimal(root, name=name))


# --------------------------------------------------------------------------- background, extensions, split


@pytest.mark.parametrize(
    "value, rgb",
    [("white", (255, 255, 255)), ("Black", (0, 0, 0)), ("GRAY", (128, 128, 128)), ([1, 2, 3], (1, 2, 3)), ([0, 255, 0], (0, 255, 0))],
)
def test_background_named_or_rgb(root, value, rgb):
    cfg = config.from_dict(minimal(root, data={"background": value}))
    assert cfg.spec.decode.background == rgb
    assert config.parse_background(value) == rgb


@pytest.mark.parametrize(
    "value", ["purple", "", [1, 2], [1, 2, 3, 4], [0, 0, 256], [-1, 0, 0], [True, 0, 0], [1.5, 0, 0], ["0", 0, 0], 5, None]
)
def test_invalid_background_is_refused_naming_file_and_key(root, value):
    with pytest.raises(ConfigError, match=r"^my\.yaml: key 'data\.background': got .*; allowed: white, black, gray or \[r, g, b\]"):
        config.from_dict(minimal(root, data={"background": value}), "my.yaml")


def test_extensions_are_normalised(root):
    cfg = config.from_dict(minimal(root, data={"extensions": [".JPG", "png", " .Tiff ", "WebP"]}))
    assert cfg.data.extensions == [".jpg", ".png", ".tiff", ".webp"]


@pytest.mark.parametrize("value", [[], [""], [".jpg", "."]])
def test_empty_extensions_are_refused(root, value):
    with pytest.raises(ConfigError, match=r"key 'data\.extensions': got "):
        config.from_dict(minimal(root, data={"extensions": value}))


@pytest.mark.parametrize("val, test", [(0.45, 0.45), (0.6, 0.3), (0.3, 0.6), (0.5, 0.5), (0.9, 0.0), (0.0, 0.9), (0.8, 0.8)])
def test_split_fractions_leaving_under_10_percent_for_training_are_refused(root, val, test):
    with pytest.raises(ConfigError, match=r"keys 'data\.split\.val' \+ 'data\.split\.test' = .*must leave at least 10% for training"):
        config.from_dict(minimal(root, data={"split": {"val": val, "test": test}}))


@pytest.mark.parametrize("val, test", [(0.44, 0.45), (0.0, 0.0), (0.2, 0.2), (0.0, 0.89)])
def test_split_fractions_below_the_limit_are_accepted(root, val, test):
    cfg = config.from_dict(minimal(root, data={"split": {"val": val, "test": test}}))
    assert (cfg.data.split.val, cfg.data.split.test) == (val, test)


# --------------------------------------------------------------------------- files


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ndata: {root: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        config.load(path)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"c\.yaml: the top level must be a mapping of sections, got {kind}"):
        config.load(path)


def test_empty_file_reports_the_first_required_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"key 'name' is required"):
        config.load(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not a UTF-8 text file"):
        config.load(path)


def test_duplicate_keys_are_refused_not_silently_overwritten(tmp_path, root):
    # PyYAML would keep only the second 'train' section and drop epochs: 5.
    path = tmp_path / "c.yaml"
    path.write_text(f"name: t\ndata: {{root: {root}}}\ntrain: {{epochs: 5}}\nhead: {{}}\ntrain: {{batch_size: 4}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: .*duplicate key 'train'"):
        config.load(path)


def test_yaml_merge_keys_still_work(tmp_path):
    # The duplicate-key check must not refuse a merge key overridden locally.
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\n")
    assert config.read_yaml(path) == {"base": {"x": 1, "y": 2}, "d": {"x": 3, "y": 2}}


@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("1.0e-3", 1e-3), ("2E-5", 2e-5), ("0.01", 0.01), ("1", 1.0)])
def test_exponent_floats_in_yaml_are_numbers(tmp_path, root, text, expected):
    # YAML 1.1 reads 1e-4 as a string; the config loader must not.
    path = tmp_path / "c.yaml"
    path.write_text(f"name: t\ndata: {{root: {root}}}\ntrain: {{learning_rate: {text}}}\n")
    assert config.load(path).train.learning_rate == pytest.approx(expected)


# --------------------------------------------------------------------------- paths


def test_missing_data_root_names_key_and_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "c.yaml", {"name": "t", "data": {"root": "no/such/dir"}})
    with pytest.raises(ConfigError, match=r"key 'data\.root': directory 'no/such/dir' does not exist") as info:
        config.load(path)
    assert f"working directory {os.getcwd()!r}" in str(info.value)
    assert str(info.value).startswith(path)
    # check_exists=False is for tools that only read the config
    assert config.load(path, check_exists=False).data.root == "no/such/dir"


def test_relative_data_root_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "work" / "images").mkdir(parents=True)
    path = write_yaml(tmp_path / "c.yaml", {"name": "t", "data": {"root": "images"}})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(path)
    monkeypatch.chdir(tmp_path / "work")
    assert config.load(path).data.root == "images"


def test_data_root_that_is_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"key 'data\.root': directory '.*file\.txt' is a file, not a directory"):
        config.check_paths(config.from_dict({"name": "t", "data": {"root": str(tmp_path / "file.txt")}}))


def test_missing_weights_file_is_refused(tmp_path, root):
    path = write_yaml(tmp_path / "c.yaml", minimal(root, backbone={"weights": str(tmp_path / "w.h5")}))
    with pytest.raises(ConfigError, match=r"key 'backbone\.weights': file '.*w\.h5' does not exist; use 'imagenet', null"):
        config.load(path)
    (tmp_path / "w.h5").write_bytes(b"")
    assert config.load(path).backbone.weights == str(tmp_path / "w.h5")


@pytest.mark.parametrize("weights", ["imagenet", None])
def test_imagenet_and_null_weights_need_no_file(tmp_path, root, weights):
    path = write_yaml(tmp_path / "c.yaml", minimal(root, backbone={"weights": weights}))
    assert config.load(path).backbone.weights == weights


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    "override, getter, expected",
    [
        ("train.epochs=5", lambda c: c.train.epochs, 5),
        ("head.dropout=0.25", lambda c: c.head.dropout, 0.25),
        ("train.learning_rate=1e-4", lambda c: c.train.learning_rate, 1e-4),
        ("seed=0", lambda c: c.seed, 0),
        ("name=run2", lambda c: c.name, "run2"),
        ("name='007'", lambda c: c.name, "007"),
        ("cache.compression=null", lambda c: c.cache.compression, None),
        ("cache.compression=~", lambda c: c.cache.compression, None),
        ("backbone.weights=null", lambda c: c.backbone.weights, None),
        ("head.units=[64, 32]", lambda c: c.head.units, [64, 32]),
        ("head.units=[]", lambda c: c.head.units, []),
        ("data.background=[0, 0, 0]", lambda c: c.spec.decode.background, (0, 0, 0)),
        ("data.extensions=[.JPG, png]", lambda c: c.data.extensions, [".jpg", ".png"]),
        ("data.split.val=0.1", lambda c: c.data.split.val, 0.1),
        ("data.resize=center_crop", lambda c: c.data.resize, "center_crop"),
        ("extract.workers=4", lambda c: c.extract.workers, 4),  # section absent from the file
        (" train.epochs =7", lambda c: c.train.epochs, 7),
    ],
)
def test_set_overrides(tmp_path, root, override, getter, expected):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    assert getter(config.load(path, [override])) == expected


def test_dict_overrides_for_the_python_api(tmp_path, root):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    cfg = config.load(path, {"train.epochs": 5, "head.units": [64], "backbone.name": "resnet50", "backbone.width": 1,
                             "augment": {"views": 2}})
    assert (cfg.train.epochs, cfg.head.units, cfg.augment.views) == (5, [64], 2)
    # the spec follows: the new backbone's own layer, resolved once
    assert cfg.spec.name == "resnet50" and cfg.spec.head_layer == "conv5_block3_out"
    # typed and checked like the file: values are not parsed from strings
    with pytest.raises(ConfigError, match=r"key 'train\.epochs': expected an integer, got '5'"):
        config.load(path, {"train.epochs": "5"})
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'\. Did you mean 'epochs'"):
        config.load(path, {"train.epoch": 5})
    with pytest.raises(ConfigError, match=r"override '': the key must be dotted names"):
        config.load(path, {"": 5})


def test_later_overrides_win_and_the_input_is_not_mutated(root):
    mapping = minimal(root, train={"epochs": 1})
    result = config.apply_overrides(mapping, ["train.epochs=5", "train.epochs=6", "data.split.test=0.2"])
    assert result["train"]["epochs"] == 6 and result["data"]["split"] == {"test": 0.2}
    assert mapping == minimal(root, train={"epochs": 1})


def test_set_into_a_null_section(root):
    result = config.apply_overrides(minimal(root, head=None), ["head.units=[4]"])
    assert config.from_dict(result).head.units == [4]


def test_set_values_are_typed_by_the_schema(tmp_path, root):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    with pytest.raises(ConfigError, match=r"key 'train\.epochs': expected an integer, got '5' \(str\)"):
        config.load(path, ["train.epochs='5'"])
    with pytest.raises(ConfigError, match=r"key 'train\.epochs': expected an integer, got ''"):
        config.load(path, ["train.epochs="])
    with pytest.raises(ConfigError, match=r"key 'name': expected a string, got None"):
        config.load(path, ["name=null"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.epoch=5", r"key 'train\.epoch': unknown key 'epoch'\. Did you mean 'epochs'\?"),
        ("trian.epochs=5", r"unknown key 'trian'\. Did you mean 'train'\?"),
        ("data.split.tset=0.1", r"unknown key 'tset'\. Did you mean 'test'\?"),
    ],
)
def test_set_unknown_key_is_refused_with_suggestion(tmp_path, root, override, pattern):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        config.load(path, [override])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("seed.value=1", r"--set 'seed\.value=1': 'seed' is a value, not a section"),
        ("train.epochs.max=1", r"'epochs' is a value, not a section"),
        ("head.units.0=5", r"'units' is a value, not a section"),
        ("data.root.x=1", r"'root' is a value, not a section"),
    ],
)
def test_set_under_a_scalar_is_refused(tmp_path, root, override, pattern):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        config.load(path, [override])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("foo", r"--set 'foo': expected KEY=VALUE, e\.g\. --set train\.epochs=5"),
        ("train.epochs", r"expected KEY=VALUE"),
        ("=5", r"--set '=5': the key must be dotted names"),
        ("train..epochs=5", r"the key must be dotted names"),
        (".epochs=5", r"the key must be dotted names"),
        ("train.epochs=[1", r"--set 'train\.epochs=\[1': value is not valid YAML"),
        ("head={a: 1, a: 2}", r"value is not valid YAML \(duplicate key 'a'"),
    ],
)
def test_malformed_set_is_refused(tmp_path, root, override, pattern):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        config.load(path, [override])


def test_parse_override():
    assert config.parse_override("a.b.c=1") == (["a", "b", "c"], 1)
    assert config.parse_override("x=a=b") == (["x"], "a=b")  # only the first '=' splits
    assert config.parse_override("x=  ") == (["x"], "")


def test_set_replacing_a_section_with_a_scalar_is_refused(tmp_path, root):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    with pytest.raises(ConfigError, match=r"'train': expected a mapping of keys, got 5"):
        config.load(path, ["train=5"])


# --------------------------------------------------------------------------- command line


def test_from_args_with_a_config_file(tmp_path, root):
    path = write_config(tmp_path / "c.yaml", root, tmp_path)
    cfg = cli.config_from_args(parser().parse_args([str(path), "--set", "train.epochs=3", "--set", "head.units=[]"]))
    assert cfg.train.epochs == 3 and cfg.head.units == [] and cfg.name == "tiny"


def test_config_is_required_when_asked(capsys):
    with pytest.raises(SystemExit):
        parser(config_required=True).parse_args([])
    assert parser(config_required=False).parse_args([]).config is None


def test_from_args_without_config_and_no_last_extract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no CONFIG given and no extract has run in this directory \(.*last-extract\.json not found\); pass a config file"):
        cli.config_from_args(parser().parse_args([]))


def test_remember_last_extract_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    path = write_config(tmp_path / "c.yaml", "images", tmp_path, data={"background": [9, 9, 9]})
    overrides = ["train.epochs=3", "cache.compression=lzf"]
    cfg = config.load(path, overrides)
    cli.remember_last_extract(cfg, str(path), overrides)
    assert (tmp_path / ".vggtl" / "last-extract.json").is_file()
    assert [p.name for p in (tmp_path / ".vggtl").iterdir()] == ["last-extract.json"]  # no temp file left

    logs = []
    again = cli.config_from_args(parser().parse_args([]), log=logs.append)
    assert again == cfg
    assert again.train.epochs == 3 and again.cache.compression == "lzf" and again.spec.decode.background == (9, 9, 9)
    assert len(logs) == 1 and str(path) in logs[0] and "--set train.epochs=3 cache.compression=lzf" in logs[0]

    # --set on top of the remembered config; the original file is not needed any more
    path.unlink()
    more = cli.config_from_args(parser().parse_args(["--set", "head.dropout=0.1"]), log=logs.append)
    assert more.head.dropout == 0.1 and more.train.epochs == 3
    with pytest.raises(ConfigError, match=r"last-extract\.json\).*unknown key 'epoch'\. Did you mean 'epochs'"):
        cli.config_from_args(parser().parse_args(["--set", "train.epoch=1"]), log=logs.append)


def test_last_extract_paths_are_still_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    path = write_config(tmp_path / "c.yaml", "images", tmp_path)
    cli.remember_last_extract(config.load(path), str(path), [])
    (tmp_path / "images").rmdir()
    with pytest.raises(ConfigError, match=r"key 'data\.root': directory 'images' does not exist"):
        cli.config_from_args(parser().parse_args([]), log=lambda *_: None)


def test_last_extract_is_per_working_directory(tmp_path, monkeypatch):
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    path = write_config(tmp_path / "c.yaml", "images", tmp_path)
    cli.remember_last_extract(config.load(path), str(path), [])
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ConfigError, match="no CONFIG given"):
        cli.config_from_args(parser().parse_args([]))


@pytest.mark.parametrize("content", ["not json", json.dumps({"config_path": "c.yaml"}), json.dumps([1, 2])])
def test_unreadable_last_extract(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".vggtl").mkdir()
    (tmp_path / ".vggtl" / "last-extract.json").write_text(content)
    with pytest.raises(ConfigError, match=r"last-extract\.json is unreadable; pass a config file explicitly"):
        cli.config_from_args(parser().parse_args([]), log=lambda *_: None)


# --------------------------------------------------------------------------- describe_keys


def test_describe_keys_covers_every_key(root):
    rows = config.describe_keys()
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(leaves(config.from_dict(minimal(root)).to_dict()))
    assert all(doc for _, _, doc in rows), [key for key, _, doc in rows if not doc]
    table = {key: default for key, default, _ in rows}
    assert table["name"] == table["data.root"] == "(required)"
    assert table["train.epochs"] == "100"
    assert table["cache.compression"] == "null"
    assert json.loads(table["data.extensions"]) == list(IMAGE_EXTENSIONS)
    assert json.loads(table["head.units"]) == [512]
    # every non-required default is valid JSON and agrees with a default config
    defaults = leaves(config.from_dict(minimal(root)).to_dict())
    # null image size and layer mean the backbone's own (vgg16: 224, block5_pool)
    backbone_own = {"data.image_size": 224, "backbone.layer": "block5_pool"}
    for key, default in table.items():
        if default != "(required)":
            assert backbone_own.get(key, json.loads(default)) == defaults[key], key
    assert table["data.image_size"] == table["backbone.layer"] == "null"


# --------------------------------------------------------------------------- backbones


@pytest.mark.parametrize(
    "name, size, layer",
    [
        ("vgg16", 224, "block5_pool"),
        ("vgg19", 224, "block5_pool"),
        ("resnet50", 224, "conv5_block3_out"),
        ("inception_v3", 299, "mixed10"),
        ("mobilenet_v2", 224, "out_relu"),
    ],
)
def test_backbone_defaults_fill_image_size_and_layer(root, name, size, layer):
    cfg = config.from_dict(minimal(root, backbone={"name": name}))
    assert (cfg.data.image_size, cfg.backbone.layer) == (size, layer)
    # explicit values win, and the resolved config reads back the same
    cfg2 = config.from_dict(minimal(root, backbone={"name": name}, data={"root": str(root), "image_size": 160}))
    assert cfg2.data.image_size == 160
    assert config.from_dict(yaml.safe_load(cfg.to_yaml())).digest() == cfg.digest()


def test_backbone_layer_must_belong_to_that_backbone(root):
    with pytest.raises(ConfigError, match=(
        r"key 'backbone\.layer': got 'block5_pool'; allowed for resnet50: "
        r"conv2_block3_out, conv3_block4_out, conv4_block6_out, conv5_block3_out"
    )):
        config.from_dict(minimal(root, backbone={"name": "resnet50", "layer": "block5_pool"}))


def test_image_size_below_the_backbones_minimum(root):
    with pytest.raises(ConfigError, match=(
        r"key 'data\.image_size': got 64; inception_v3 up to mixed10 needs at least 75 \(its own size is 299\)"
    )):
        config.from_dict(minimal(root, backbone={"name": "inception_v3"}, data={"root": str(root), "image_size": 64}))


def test_finetune_blocks_per_backbone(root):
    cfg = config.from_dict(minimal(root, backbone={"name": "resnet50"}, finetune={"blocks": 2}))
    assert cfg.spec.stored_layers == ("conv5_block3_out", "conv3_block4_out", "channel_stats")
    assert cfg.spec.boundary_layer == "conv3_block4_out"
    assert config.from_dict(minimal(root, finetune={"blocks": 1})).spec.stored_layers == ("block5_pool", "block4_pool",
                                                                                          "channel_stats")
    assert config.from_dict(minimal(root)).spec.boundary_layer is None
    with pytest.raises(ConfigError, match=r"key 'finetune\.blocks': got 4; mobilenet_v2 allows 0-3"):
        config.from_dict(minimal(root, backbone={"name": "mobilenet_v2"}, finetune={"blocks": 4}))
    with pytest.raises(ConfigError, match=r"fine-tuning needs the head on mixed10, but 'backbone\.layer' is 'mixed7'"):
        config.from_dict(minimal(root, backbone={"name": "inception_v3", "layer": "mixed7"}, finetune={"blocks": 1}))


def test_joined_backbone_layer(root):
    """'a+b' joins layers (bottom to top); fine-tuning works when every part is at
    or above the boundary and the last is the top."""
    cfg = config.from_dict(minimal(root, backbone={"layer": "block4_pool+block5_pool"}, finetune={"blocks": 1}))
    assert cfg.spec.stored_layers == ("block4_pool+block5_pool", "block4_pool", "channel_stats")
    assert cfg.spec.feature_shape(cfg.spec.head_layer) == (7, 7, 1024)
    for layer, message in [
        ("block5_pool+block4_pool", r"got 'block5_pool\+block4_pool'; join distinct layers from bottom to top, e\.g\. block4_pool\+block5_pool"),
        ("block4_pool+block4_pool", r"got .block4_pool\+block4_pool.; join distinct layers from bottom to top"),
        ("block4_pool+block6_pool", r"got 'block4_pool\+block6_pool'; allowed for vgg16: block1_pool, .*, or several of them joined"),
    ]:
        with pytest.raises(ConfigError, match=r"key 'backbone\.layer': " + message):
            config.from_dict(minimal(root, backbone={"layer": layer}))
    with pytest.raises(ConfigError, match=r"'block3_pool' is below the fine-tuning boundary 'block4_pool' of finetune\.blocks: 1"):
        config.from_dict(minimal(root, backbone={"layer": "block3_pool+block5_pool"}, finetune={"blocks": 1}))
    assert config.from_dict(minimal(root, backbone={"layer": "block3_pool+block5_pool"}, finetune={"blocks": 2}))
    with pytest.raises(ConfigError, match=r"fine-tuning needs the head on block5_pool, but 'backbone\.layer' is 'block3_pool\+block4_pool'"):
        config.from_dict(minimal(root, backbone={"layer": "block3_pool+block4_pool"}, finetune={"blocks": 1}))
    with pytest.raises(ConfigError, match=(
        r"key 'backbone\.layer': at data\.image_size 115, mixed2's 12x12 map does not pool evenly onto mixed7's 5x5; "
        r"use another data\.image_size \(e\.g\. 299\)"
    )):
        config.from_dict(minimal(root, backbone={"name": "inception_v3", "layer": "mixed2+mixed7"}, data={"root": str(root), "image_size": 115}))


def test_a_shortcut_option_is_a_set_override_that_wins(tmp_path, root):
    import argparse

    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(root)))
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser, config_required=True)
    cli.add_shortcut(parser, "--folds", "train.folds", "K", "folds")
    args = parser.parse_args([str(path), "--folds", "3", "--set", "train.folds=5", "--set", "train.epochs=7"])
    cfg = cli.config_from_args(args)
    assert cfg.train.folds == 3 and cfg.train.epochs == 7
    assert cli.config_from_args(parser.parse_args([str(path)])).train.folds == 0


@pytest.mark.parametrize("override, message", [
    ("data.split.test=.nan", "key 'data.split.test': got nan; expected a finite number"),
    ("head.l2=.nan", "key 'head.l2': got nan; expected a finite number"),
    ("train.min_delta=.inf", "key 'train.min_delta': got inf; expected a finite number"),
    ("head.units=[100000000]", "key 'head.units': got 100000000; must be at most 16384"),
])
def test_nan_infinity_and_absurd_sizes_are_refused_naming_the_key(tmp_path, override, message):
    """YAML's .nan passes every range test (nan < low is False): refused as not finite."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(tmp_path)))
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path, [override])


@pytest.mark.parametrize("text, message", [
    # 8 levels of 8 aliases: 16 million values once expanded, from a 400-byte file
    ('a: &a ["x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 8)}]\n" for i in range(7)) + "name: t\n",
     "its aliases expand to more than 100000 values"),
    ('a: &a ["x"]\n' + "".join(f"k{i}: [{','.join(['*a'] * 9)}]\n" for i in range(9)), "more than 64 aliases"),
    ("name: " + "[" * 20000 + "\n", "nested more than 32 levels deep"),
])
def test_yaml_bombs_are_refused_before_anything_is_expanded(tmp_path, text, message):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(path)


def test_an_empty_required_key_is_refused_not_read_as_the_working_directory(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(tmp_path)))
    with pytest.raises(ConfigError, match=r"key 'data.root' is empty; it is required"):
        config.load(path, ["data.root="])

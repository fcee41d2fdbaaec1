"""The vggtl console script: vggtl <command> ... runs python -m vggtl.<command> ...

Also what every command shares on the command line: its parser, the CONFIG
argument with ``--set`` overrides and shortcuts, and the config of the last
``extract`` in the working directory (``.vggtl/last-extract.json``), which
``train`` and ``tune`` use when no CONFIG is given.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import sys
from pathlib import Path

from vggtl import config
from vggtl.errors import ConfigError, invocation

COMMANDS = {
    "extract": "cache frozen-backbone features (VGG16 by default) of a labeled image tree (HDF5 store)",
    "train": "train the head on cached features; write artifact + report",
    "audit": "find mislabeled, duplicate and off-topic images and whether more would help; act on it (--apply)",
    "predict": "top-k labels for image files from an artifact",
    "weights": "provision or verify the offline VGG16 ImageNet weights",
    "classify": "ImageNet labels for photos with the full pretrained VGG16/VGG19",
    "summary": "layer table (and diagram) of an artifact's or a config's model",
    "export": "write the model for TF Serving, LiteRT (quantized), ONNX or OpenVINO, each verified on the test images",
    "tune": "search head/training settings by cross-validation on cached features (Optuna)",
    "runs": "list a run's versions with their numbers and config changes; compare two",
}


def description(doc: str) -> str:
    """A command module's docstring as plain text for ``--help``: reST markup
    (double backticks, :mod:/:func: roles) removed, paragraphs kept."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc.strip())
    return text.replace("``", "")


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser for a command (``prog``: ``"vggtl extract"``): ``--help``
    shows its docstring as plain paragraphs (see :func:`description`), every
    command in it written as the user invoked this one (:func:`~vggtl.errors.invocation`)."""
    text = re.sub(r"(?:python -m vggtl\.|vggtl )(%s)\b" % "|".join(COMMANDS), lambda m: invocation(m.group(1)), description(doc))
    return argparse.ArgumentParser(prog=invocation(prog.split()[-1]), description=text,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# --------------------------------------------------------------------------- the config on the command line

LAST_EXTRACT = Path(".vggtl") / "last-extract.json"


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the flag and the value when it is not)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_config_arguments(parser, config_required: bool) -> None:
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
    ``--set`` of the same key (see :func:`config_from_args`)."""
    class Shortcut(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            namespace.shortcuts = [*getattr(namespace, "shortcuts", []), f"{key}={value}"]

    parser.add_argument(flag, type=int, metavar=metavar, action=Shortcut, help=f"{help} (same as --set {key}={metavar})")


def config_from_args(args, log=print) -> config.Config:
    """Config from parsed arguments; without CONFIG, reuse the last extract's config."""
    overrides = args.set + getattr(args, "shortcuts", [])  # shortcuts last: they win
    if args.config:
        return config.load(args.config, overrides)
    if not LAST_EXTRACT.is_file():
        raise ConfigError(
            "no CONFIG given and no extract has run in this directory "
            f"({LAST_EXTRACT} not found); pass a config file"
            + (", e.g. configs/demo.yaml" if Path("configs/demo.yaml").is_file() else " (a YAML file naming data.root; see the Configuration page of the docs)")
        )
    try:
        last = json.loads(LAST_EXTRACT.read_text())
        mapping, source = last["resolved"], last["config_path"]
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: valid JSON but not an object
        raise ConfigError(f"{LAST_EXTRACT} is unreadable; pass a config file explicitly") from None
    extra = f" with --set {' '.join(last.get('overrides', []))}" if last.get("overrides") else ""
    log(f"using the config of the last extract in this directory: {source}{extra}")
    cfg = config.from_dict(config.apply_overrides(mapping, overrides), f"{source} (via {LAST_EXTRACT})")
    config.check_paths(cfg, source)
    return cfg


def remember_last_extract(cfg: config.Config, config_path: str, overrides: list[str]) -> None:
    """Record ``cfg`` so ``train`` without CONFIG can reuse it (best effort:
    a working directory vggtl cannot write only loses that convenience)."""
    tmp = LAST_EXTRACT.with_suffix(f".tmp{os.getpid()}")
    try:
        LAST_EXTRACT.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps({"config_path": str(config_path), "overrides": overrides, "resolved": cfg.to_dict()}, indent=1))
        os.replace(tmp, LAST_EXTRACT)
    except OSError:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the dispatcher


def usage() -> str:
    lines = ["usage: vggtl <command> [args...]", "", "commands:"]
    lines += [f"  {name:9s} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run 'vggtl <command> --help' for the arguments of a command."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import vggtl

        print(f"vggtl {vggtl.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {command!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"vggtl.{command}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())

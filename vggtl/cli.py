"""The vggtl console script: vggtl <command> ... runs python -m vggtl.<command> ...

Also the argparse helpers every command shares.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

COMMANDS = {
    "extract": "cache frozen-backbone features (VGG16 by default) of a labeled image tree (HDF5 store)",
    "train": "train the head on cached features; write artifact + report",
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
    """An ArgumentParser for a command: ``--help`` shows its docstring as plain
    paragraphs (see :func:`description`)."""
    return argparse.ArgumentParser(prog=prog, description=description(doc), formatter_class=argparse.RawDescriptionHelpFormatter)


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
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"vggtl.{command}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""User-facing errors and the one place they are turned into exit codes."""

from __future__ import annotations

import functools
import os
import sys


class VggtlError(Exception):
    """A mistake the user can fix (bad config, bad path, missing weights...).

    Command-line entry points print its message without a traceback and
    exit with status 2; anything else is a bug and keeps its traceback.
    """


class ConfigError(VggtlError):
    """The config file or a ``--set`` override is invalid."""


class DataError(VggtlError):
    """The image tree cannot be used (too few classes, empty class, ...)."""


class WeightsError(VggtlError):
    """Pretrained weights cannot be found, verified or loaded."""


class StoreError(VggtlError):
    """The feature store is missing, locked or does not match the config."""


class ArtifactError(VggtlError):
    """A model artifact is missing, incomplete or fails its checksums."""


EXIT_USER_ERROR = 2


def cli_entry(main):
    """Wrap a ``main(argv)`` so user errors exit 2 with a one-paragraph message."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except VggtlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # `vggtl predict ... | head`: the reader left; stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141

    return wrapper

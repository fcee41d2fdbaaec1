"""User-facing errors and the one place they are turned into exit codes."""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import os
import sys

from vggtl import tfquiet


def invocation(command: str) -> str:
    """How to run ``command`` the way the user ran this one: ``vggtl extract``
    from the console script, else ``python -m vggtl.extract`` (hints in
    messages and ``--help`` must work where the user typed them)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "vggtl":
        return f"vggtl {command}"
    return f"python -m vggtl.{command}"


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


class TrainingError(VggtlError):
    """Training cannot go on with these settings (e.g. the loss became NaN)."""


class MissingExtra(VggtlError):
    """An optional dependency of one feature is not installed."""


def require_extra(module: str, extra: str, feature: str):
    """Import and return ``module``, or raise :class:`MissingExtra` naming the
    ``pip install 'vggtl[extra]'`` that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{feature} needs the optional package {module.split('.')[0]!r}: pip install 'vggtl[{extra}]'") from None


class PathError(VggtlError):
    """A file or directory cannot be read or written (disk full, permissions, a
    path running through a regular file...)."""


EXIT_USER_ERROR = 2

# What to do about the usual errnos; anything else gets the system's wording alone.
_ADVICE = {
    errno.ENOSPC: "free some disk space or choose a directory on another disk",
    errno.EDQUOT: "free some space within your quota or choose another directory",
    errno.EFBIG: "the file-size limit was reached (ulimit -f); raise it or free space",
    errno.EACCES: "check the permissions, or choose a directory you can write",
    errno.EPERM: "check the permissions, or choose a directory you can write",
    errno.EROFS: "the file system is read-only; choose a writable directory",
    errno.ENOTDIR: "a part of this path is a regular file, not a directory; choose another path",
    errno.EISDIR: "this path is a directory, not a file",
}
# Denied while reading: writing elsewhere would not help.
_READ_ADVICE = "check its permissions: the user running vggtl must be able to read it"
_READ_ACTIONS = ("read", "list", "open", "decode")


def describe_os_error(exc: OSError, path=None, action: str = "access") -> str:
    """One paragraph: ``cannot <action> <path>: <reason>; <advice>``.

    Args:
        exc: the error.
        path: the path to name; defaults to ``exc.filename``.
        action: verb phrase, e.g. ``'write the feature store'``.
    """
    named = path if path is not None else exc.filename
    reason = exc.strerror or " ".join(str(exc).split())[:300] or type(exc).__name__
    code = exc.errno if exc.errno is not None else _errno_in_text(str(exc))
    advice = _ADVICE.get(code)
    if code in (errno.EACCES, errno.EPERM) and action.startswith(_READ_ACTIONS):
        advice = _READ_ADVICE
    where = f" {named}" if named is not None else ""
    return f"cannot {action}{where}: {reason}" + (f"; {advice}" if advice else "")


def _errno_in_text(text: str) -> int | None:
    """h5py reports write failures as text ("errno = 28, ..."), without errno set."""
    for code in _ADVICE:
        if f"errno = {code}," in text or f"[Errno {code}]" in text:
            return code
    return None


def path_error(exc: OSError, path=None, action: str = "access") -> PathError:
    """The :class:`PathError` to raise ``from None`` in place of ``exc``."""
    return PathError(describe_os_error(exc, path, action))


@functools.cache
def _exit_without_final_collections() -> None:
    """Once per process that runs a command: at exit, move every object to
    the permanent generation before Python's final garbage collections, which
    otherwise walk every object TensorFlow made -- about 1.2 s of each
    command's exit on 2 cores, after its last line. Atexit handlers still run
    and refcounting still frees what it frees; only cyclic garbage is left to
    the operating system (vggtl closes every file it writes)."""
    atexit.register(gc.freeze)


def cli_entry(main):
    """Wrap a ``main(argv)`` so user errors exit 2 with a one-paragraph message.

    An ``OSError`` that reaches this point (a file vggtl had to read or write
    and could not) is reported the same way, naming the path: disk full or a
    read-only directory is the user's environment, not a bug in vggtl.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        _exit_without_final_collections()
        tfquiet.defer_unused_imports()
        try:
            return main(argv)
        except VggtlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            # Every command publishes atomically: say so, and that extract resumes.
            print("interrupted: nothing half-written was published; run the command again (extract keeps the "
                  "features it had finished and computes only the rest)", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # `vggtl predict ... | head`: the reader left; stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR

    return wrapper

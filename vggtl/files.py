"""File helpers every stage shares: one content hash, directories made with a clear error, atomic text writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vggtl.errors import PathError, path_error

_HASH_BLOCK = 1 << 20


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def make_dir(path, what: str) -> Path:
    """``mkdir -p path`` for the ``what`` directory (e.g. ``"cache.path"``).

    Raises:
        PathError: naming ``what`` and the path, when it cannot be created
            (a parent is a regular file, permission denied, read-only file
            system...) or cannot be written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise path_error(exc, path, f"create the {what} directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PathError(f"cannot write to the {what} directory {path}: permission denied; choose a directory you can write")
    return path


def check_writable(folder, what: str) -> Path:
    """Create and remove a probe file in ``folder``, so a folder that cannot be
    written (permissions, a read-only or pseudo file system: ``os.access``
    says yes to root there) fails before any work, naming ``what``.

    Raises:
        PathError: naming the folder, the reason and what to do.
    """
    folder = Path(folder)
    probe = folder / f".vggtl-write-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise path_error(exc, folder, f"write into the {what} folder") from None
    return folder


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a hidden temporary file renamed
    over it: a reader sees the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path

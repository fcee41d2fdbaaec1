"""Keras weight files for every backbone: Keras' cache and download, loading,
and a memoized digest of a weights file.

h5py-free and TensorFlow-free until a file is actually downloaded or loaded,
so a warm ``extract`` can name the weights it would use without importing
TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from vggtl import tfquiet
from vggtl.errors import WeightsError
from vggtl.files import sha256_file

#: Environment variable overriding the vggtl cache directory.
CACHE_ENV_VAR = "VGGTL_CACHE_DIR"
# mkstemp creates 0600 files; a cache other users or jobs read must not be.
# (A fixed mode rather than the umask: reading the umask means setting it.)
PUBLIC_MODE = 0o644


def cache_dir():
    """Return the vggtl cache directory.

    Returns:
        `pathlib.Path`: ``$VGGTL_CACHE_DIR`` if set and non-empty, else
        ``~/.cache/vggtl``. The directory is not created.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "vggtl"


def keras_cache_path(filename):
    """Where Keras keeps a downloaded weights file: ``$KERAS_HOME/models/<filename>``.

    Args:
        filename: the file's name in Keras' cache; the VGG16 notop file by default.
    """
    # Same rule as keras.src.backend.config: $KERAS_HOME, else ~/.keras.
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home).expanduser() / "models" / filename


def keras_download(filename, url, md5=None):
    """Keras' own download of ``url`` into its cache (:func:`keras_cache_path`).

    Args:
        filename: name of the file in the cache.
        url: where to download it from.
        md5: the hash Keras checks after downloading, or None.

    Returns:
        `pathlib.Path` of the downloaded (or already cached) file.

    Raises:
        WeightsError: the download failed (offline, HTTP error, hash
            mismatch); the message is the reason only, callers add remedies.
    """
    tfquiet.load()
    import keras

    target = keras_cache_path(filename)
    try:
        # get_file silently falls back to /tmp/.keras when the cache does not exist yet.
        target.parent.mkdir(parents=True, exist_ok=True)
        # Keras prints its progress bar on stdout: keep stdout for results.
        with contextlib.redirect_stdout(sys.stderr):
            return Path(
                keras.utils.get_file(filename, url, cache_subdir="models", file_hash=md5, cache_dir=str(target.parent.parent))
            )
    except Exception as exc:  # noqa: BLE001 - urllib, HTTP and hash errors vary by platform
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"Keras download failed: {reason}") from None


def keras_cached_or_download(filename, url, md5=None, allow_download=True):
    """Keras' cached copy of a weights file, else Keras' download of it.

    Args:
        filename, url, md5: as for :func:`keras_download`.
        allow_download: try the download when the cache lacks the file.

    Returns:
        ``(path, origin)`` with origin ``'Keras cache'`` or ``'Keras download'``.

    Raises:
        WeightsError: whose message is the reason only (``none found
            locally[; Keras download failed: ...]``); callers add remedies.
    """
    cached = keras_cache_path(filename)
    if cached.is_file():
        return cached, "Keras cache"
    if not allow_download:
        raise WeightsError("none found locally")
    try:
        return keras_download(filename, url, md5), "Keras download"
    except WeightsError as exc:
        raise WeightsError(f"none found locally; {exc}") from None


def load_into(model, path, what, hint):
    """``model.load_weights(path)``, refusing partial loads.

    Keras 3 only *warns* when parts of a network find no weights in the file
    ("... will retain their freshly-initialized weights"); a half-random
    network must be an error.

    Args:
        model: a built Keras model.
        path: a Keras ``.weights.h5`` or legacy ``.h5`` weights file.
        what: the network, for the message, e.g. ``'ResNet50(include_top=False)'``.
        hint: what the file must be instead, for the message.

    Raises:
        WeightsError: naming the file, the network, Keras' reason and ``hint``.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            model.load_weights(str(path))
    except UserWarning:
        # Keras' own wording blames old Keras versions; here it means the file
        # belongs to another network.
        raise WeightsError(f"{path}: has no weights for some layers of {what}; {hint}") from None
    except Exception as exc:  # noqa: BLE001 - h5py/Keras raise many types for bad files
        reason = " ".join(str(exc).split())[:300]
        raise WeightsError(f"{path}: cannot be loaded into {what} ({reason}); {hint}") from None


def existing_file(path, what: str = "weights file") -> Path:
    """``path`` as a Path; WeightsError when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist")
    return path


def memoized_sha256(path):
    """``'sha256:<hex>'`` of a weights file's bytes, memoized like :func:`memoized`.

    The digest of weights whose tensors vggtl does not fingerprint itself
    (every backbone but VGG16, whose offline module digests its tensors).

    Raises:
        WeightsError: ``path`` does not exist or is not a file.
    """
    path = existing_file(path)
    return memoized("sha256|" + stat_key(path), lambda: "sha256:" + sha256_file(path))


# ---------------------------------------------------------------------------
# Digest memo (in the vggtl cache, keyed by path and stat)
# ---------------------------------------------------------------------------


def _memo_file():
    return cache_dir() / "weights-digests.json"


def stat_key(path):
    # Size + mtime, and inode and ctime too because copies made with
    # `cp -p`/`rsync -t` keep size and mtime, and some filesystems only have
    # 1-2 s mtime resolution, while os.replace always yields a new inode.
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _read_memo():
    try:
        memo = json.loads(_memo_file().read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def memoized(key, compute):
    """The digest memoized under ``key``, else ``compute()``, memoized."""
    digest = _read_memo().get(key)
    if digest is None:
        digest = compute()
        _memoize_digest(key, digest)
    return digest


def _memoize_digest(key, digest):
    # Best effort: one JSON file in the cache (the weights themselves may sit
    # in a read-only directory, as the shared copy does). Losing it only
    # costs a re-read of the file.
    memo = _read_memo()
    memo[key] = digest
    target = _memo_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f, indent=1)
        os.chmod(tmp, PUBLIC_MODE)
        os.replace(tmp, target)
    except OSError:
        Path(tmp).unlink(missing_ok=True)

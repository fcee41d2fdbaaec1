"""Thumbnails of the images as the model sees them, cached by content.

A thumbnail is the decoded model input (``data.resize``, ``data.background``,
``data.image_size``: exactly what extraction feeds the network) shrunk to
:data:`SIDE` pixels and saved as a JPEG under ``$VGGTL_CACHE_DIR/thumbs/``,
keyed by the file's content hash and the decode settings. Extraction writes
it while it has the image decoded anyway (a millisecond beside the
convolutions), so the pages that show images (``report.html``,
``audit.html``, the compare page) never decode a file a second time: one
10k x 16k PNG takes ~8 s to decode. A file no one extracted is decoded on
first use and cached then. A cache that cannot be written only costs time.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

SIDE = 128  # pixels: sharp on a phone, ~4-8 KB each
QUALITY = 80
VERSION = 1  # bump when the way thumbnails are made changes: old cached ones are not reused


def jpeg_bytes(rgb: np.ndarray, side: int = SIDE) -> bytes:
    """A JPEG of an ``(H, W, 3)`` uint8 image, its longer side at most ``side``."""
    from PIL import Image

    image = Image.fromarray(np.asarray(rgb, np.uint8), "RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def cache_path(file_sha256: str, decode) -> Path:
    """Where the thumbnail of the file with content ``file_sha256`` decoded by ``decode`` is kept."""
    from vggtl.backbones.keras_files import cache_dir

    key = hashlib.sha256(f"{file_sha256}\n{decode!r}\n{SIDE}\n{QUALITY}\n{VERSION}".encode()).hexdigest()
    return Path(cache_dir()) / "thumbs" / key[:2] / f"{key}.jpg"


def remember(file_sha256: str, decode, rgb: np.ndarray) -> None:
    """Cache the thumbnail of an image already decoded (by ``decode``) from the file ``file_sha256``."""
    target = cache_path(file_sha256, decode)
    if target.is_file():
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{id(rgb)}.tmp")
        tmp.write_bytes(jpeg_bytes(rgb))
        os.replace(tmp, target)
    except OSError:
        pass


def thumbnail(path, decode) -> bytes:
    """The thumbnail JPEG of the image file ``path``: from the cache, or decoded
    (by ``decode``, at the model's size) and cached now.

    Raises:
        UndecodableImage, OSError: the file cannot be read or decoded.
    """
    from vggtl.files import sha256_file

    sha = sha256_file(path)
    cached = cache_path(sha, decode)
    if cached.is_file():
        return cached.read_bytes()
    rgb = decode.decode(path)
    remember(sha, decode, rgb)
    return jpeg_bytes(rgb)

"""Images embedded in a page as ``data:`` URIs (small JPEGs)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np

SIDE = 128  # pixels: sharp on a phone, ~4-8 KB each
QUALITY = 80
THUMBS_VERSION = 1  # bump when the way thumbnails are made changes: old cached ones are not reused


def jpeg_bytes(rgb: np.ndarray, side: int = SIDE) -> bytes:
    """A JPEG of an ``(H, W, 3)`` uint8 image, its longer side at most ``side``."""
    from PIL import Image

    image = Image.fromarray(np.asarray(rgb, np.uint8), "RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def data_uri(rgb: np.ndarray, side: int = SIDE) -> str:
    """A JPEG ``data:`` URI of an ``(H, W, 3)`` uint8 image, its longer side at most ``side``."""
    return _uri(jpeg_bytes(rgb, side))


def _uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def cached_jpeg(path: Path, decode) -> bytes:
    """The thumbnail JPEG of the image file ``path`` decoded by ``decode``, from
    ``$VGGTL_CACHE_DIR/thumbs/`` when made before: keyed by the file's bytes and
    the decode settings, so an edited image or other settings make a new one.
    One huge PNG takes seconds to decode; every later page gets it in
    milliseconds. A cache that cannot be written only costs that time."""
    import hashlib

    from vggtl.backbones.keras_files import cache_dir

    data = Path(path).read_bytes()
    key = hashlib.sha256(data + repr((decode, QUALITY, THUMBS_VERSION)).encode()).hexdigest()
    cached = Path(cache_dir()) / "thumbs" / key[:2] / f"{key}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    jpeg = jpeg_bytes(decode.decode(path), decode.image_size)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_bytes(jpeg)
        os.replace(tmp, cached)
    except OSError:
        pass
    return jpeg


class Thumbnails:
    """Thumbnails of the images under ``root``, decoded as extraction decodes them
    (each decoded once); an image that cannot be read any more (moved, deleted,
    corrupted since training) gives None and is listed in :attr:`missing`."""

    def __init__(self, decode, root: Path, side: int = SIDE):
        self.decode, self.root = decode.at_size(side), Path(root)
        self.missing: dict[str, str] = {}
        self._uris: dict[str, str | None] = {}

    def prefetch(self, relpaths, workers: int = 0) -> None:
        """Decode ``relpaths`` ahead, on ``workers`` threads (0: one per CPU core):
        Pillow releases the GIL while decoding, so a page of many thumbnails
        takes a fraction of the time."""
        from concurrent.futures import ThreadPoolExecutor

        todo = sorted(set(relpaths) - self._uris.keys())
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            for relpath, uri in zip(todo, pool.map(self._read, todo)):
                self._uris[relpath] = uri

    def __call__(self, relpath: str) -> str | None:
        if relpath not in self._uris:
            self._uris[relpath] = self._read(relpath)
        return self._uris[relpath]

    def _read(self, relpath: str) -> str | None:
        from vggtl.data import UndecodableImage

        try:
            return _uri(cached_jpeg(self.root / relpath, self.decode))
        except (UndecodableImage, OSError) as error:
            self.missing[relpath] = str(error) or type(error).__name__
            return None

"""Images embedded in a page as ``data:`` URIs (small JPEGs)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np

from vggtl.data import thumbnails
from vggtl.data.thumbnails import SIDE, jpeg_bytes


def data_uri(rgb: np.ndarray, side: int = SIDE) -> str:
    """A JPEG ``data:`` URI of an ``(H, W, 3)`` uint8 image, its longer side at most ``side``."""
    return _uri(jpeg_bytes(rgb, side))


def _uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class Thumbnails:
    """Thumbnails of the images under ``root`` as the model sees them
    (:mod:`vggtl.data.thumbnails`: made by extraction, else decoded once); an
    image that cannot be read any more (moved, deleted, corrupted since
    training) gives None and is listed in :attr:`missing`."""

    def __init__(self, decode, root: Path):
        self.decode, self.root = decode, Path(root)
        self.missing: dict[str, str] = {}
        self._jpegs: dict[str, bytes | None] = {}

    def prefetch(self, relpaths, workers: int = 0) -> None:
        """Decode ``relpaths`` ahead, on ``workers`` threads (0: one per CPU core):
        Pillow releases the GIL while decoding, so a page of many thumbnails
        takes a fraction of the time."""
        from concurrent.futures import ThreadPoolExecutor

        todo = sorted(set(relpaths) - self._jpegs.keys())
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            for relpath, jpeg in zip(todo, pool.map(self._read, todo)):
                self._jpegs[relpath] = jpeg

    def __call__(self, relpath: str) -> str | None:
        """The thumbnail as a ``data:`` URI."""
        jpeg = self.jpeg(relpath)
        return None if jpeg is None else _uri(jpeg)

    def picture(self, relpath: str) -> np.ndarray | None:
        """The thumbnail as an ``(h, w, 3)`` uint8 array: what an overlay is drawn on."""
        from PIL import Image

        jpeg = self.jpeg(relpath)
        if jpeg is None:
            return None
        with Image.open(io.BytesIO(jpeg)) as image:
            return np.asarray(image.convert("RGB"))

    def jpeg(self, relpath: str) -> bytes | None:
        """The thumbnail's JPEG bytes, read once per page."""
        if relpath not in self._jpegs:
            self._jpegs[relpath] = self._read(relpath)
        return self._jpegs[relpath]

    def _read(self, relpath: str) -> bytes | None:
        from vggtl.data import UndecodableImage

        try:
            return thumbnails.thumbnail(self.root / relpath, self.decode)
        except (UndecodableImage, OSError) as error:
            self.missing[relpath] = str(error) or type(error).__name__
            return None

"""Images embedded in a page as ``data:`` URIs (small JPEGs)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

SIDE = 128  # pixels: sharp on a phone, ~4-8 KB each
QUALITY = 80


def data_uri(rgb: np.ndarray, side: int = SIDE) -> str:
    """A JPEG ``data:`` URI of an ``(H, W, 3)`` uint8 image, its longer side at most ``side``."""
    from PIL import Image

    image = Image.fromarray(np.asarray(rgb, np.uint8), "RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Thumbnails:
    """Thumbnails of the images under ``root``, decoded as extraction decodes them
    (each decoded once); an image that cannot be read any more (moved, deleted,
    corrupted since training) gives None and is listed in :attr:`missing`."""

    def __init__(self, decode, root: Path, side: int = SIDE):
        self.decode, self.root = decode.at_size(side), Path(root)
        self.missing: dict[str, str] = {}
        self._uris: dict[str, str | None] = {}

    def __call__(self, relpath: str) -> str | None:
        if relpath not in self._uris:
            self._uris[relpath] = self._read(relpath)
        return self._uris[relpath]

    def _read(self, relpath: str) -> str | None:
        from vggtl.data import UndecodableImage

        try:
            return data_uri(self.decode.decode(self.root / relpath))
        except (UndecodableImage, OSError) as error:
            self.missing[relpath] = str(error) or type(error).__name__
            return None

"""Decoding an image file into the network's input, robustly.

Decoding never raises for a bad file: :func:`decode_image` raises
:class:`UndecodableImage` with a human-readable reason, which callers record
and skip. EXIF orientation, every Pillow mode, transparency over a
background, the ``data.resize`` policies and the decompression-bomb guard
live here.
"""

from __future__ import annotations

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


# Pillow refuses images above 2x its MAX_IMAGE_PIXELS as decompression bombs
# before we see them; we keep the same ceiling (so data.max_pixels can only
# lower it) but make it a config key with a clear message.
DEFAULT_MAX_PIXELS = 178_956_970
WHITE = (255, 255, 255)

_EXIF_ORIENTATION = 0x0112
# Images above this many pixels (~64 MB as RGBA) are decoded one at a time.
LARGE_IMAGE_PIXELS = 16_000_000
_LARGE_DECODES = threading.Lock()


class UndecodableImage(Exception):
    """An image file that cannot be turned into pixels; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class DecodeSettings:
    """How an image file becomes model input; what extraction, training checks,
    reports, predictions, tiles and Grad-CAM must all agree on.

    Attributes:
        image_size: output side in pixels (square).
        resize: ``data.resize``, one of RESIZE_POLICIES (see :func:`decode_image`).
        background: RGB triple alpha is composited over (``data.background``).
        max_pixels: decompression-bomb guard (``data.max_pixels``); None: off.
    """

    image_size: int
    resize: str = "stretch"
    background: tuple[int, int, int] = WHITE
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def decode(self, path) -> np.ndarray:
        """:func:`decode_image` with these settings."""
        return decode_image(path, self.image_size, self.resize, self.background, self.max_pixels)

    def at_size(self, image_size: int) -> "DecodeSettings":
        """The same settings at another side (thumbnails, the from-scratch CNN)."""
        return dataclasses.replace(self, image_size=image_size)


# --------------------------------------------------------------------------- decoding


def to_basic_mode(im):
    """Convert any Pillow mode to one of L, LA, RGB, RGBA (alpha kept for compositing)."""
    from PIL import Image

    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode == "PA":
        return im.convert("RGBA")
    if mode in ("1",):
        return im.convert("L")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit and float gray: Pillow's convert('L') clips at 255, which
        # turns most 16-bit images white. Rescale to the full 8-bit range.
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / (65535.0 if arr.max(initial=0) <= 65535 else arr.max())
            arr = arr * 255.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa, La...


RESIZE_POLICIES = ("stretch", "center_crop", "pad", "trim_pad")
PADDED_POLICIES = ("pad", "trim_pad")
# trim_pad: a pixel is content when it differs from the background by more than
# this (0-255, on the gray level of the difference): antialiasing and JPEG
# noise near the background stay out, faint real content stays in.
TRIM_THRESHOLD = 8
# Margin kept around the content box, as a fraction of its width/height: the
# measured variant (docs/accuracy.md) kept 4%, so edges are not cut flush.
TRIM_MARGIN = 0.04
# The content box is found on a copy reduced to at most this side (a 10k x 16k
# PNG would otherwise be composited and compared at full size).
TRIM_PROBE_SIDE = 1024


def source_box(size, resize: str) -> tuple[int, int, int, int]:
    """Region of the source image that is resized: all of it, or its central square
    (``trim_pad`` needs the pixels: see :func:`model_box`)."""
    w, h = size
    if resize != "center_crop":
        return (0, 0, w, h)
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return (left, top, left + side, top + side)


def content_box(im, background=WHITE) -> tuple[int, int, int, int]:
    """Bounding box of the pixels that are not background, plus TRIM_MARGIN.

    ``im`` is a Pillow image in L, LA, RGB or RGBA mode; alpha is composited
    over ``background`` first, so a transparent margin and a margin painted in
    the background color are both trimmed. An image with no content at all
    gives its whole box.
    """
    from PIL import Image, ImageChops

    w, h = im.size
    factor = max(1, -(-max(w, h) // TRIM_PROBE_SIDE))
    small = im.reduce(factor) if factor > 1 else im
    rgb = composited(small, background)
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, tuple(background))).convert("L")
    found = difference.point(lambda v: 255 if v > TRIM_THRESHOLD else 0).getbbox()
    if found is None:
        return (0, 0, w, h)
    left, top, right, bottom = (found[0] * factor, found[1] * factor, min(w, found[2] * factor), min(h, found[3] * factor))
    dx, dy = int(TRIM_MARGIN * (right - left)), int(TRIM_MARGIN * (bottom - top))
    return (max(0, left - dx), max(0, top - dy), min(w, right + dx), min(h, bottom + dy))


def model_box(im, resize: str, background=WHITE) -> tuple[int, int, int, int]:
    """Region of the Pillow image ``im`` the model sees under ``data.resize``."""
    if resize == "trim_pad":
        return content_box(im, background)
    return source_box(im.size, resize)


def pad_window(box_size, image_size: int) -> tuple[int, int, int, int]:
    """Where a ``box_size`` = (width, height) region lands in the model's square
    under ``pad`` / ``trim_pad``: ``(left, top, width, height)``, aspect kept,
    longer side = ``image_size``, centred."""
    bw, bh = box_size
    scale = image_size / max(bw, bh)
    width, height = max(1, round(bw * scale)), max(1, round(bh * scale))
    return ((image_size - width) // 2, (image_size - height) // 2, width, height)


def composited(im, background=WHITE):
    """``im`` (L, LA, RGB or RGBA) as RGB, alpha composited over ``background``."""
    from PIL import Image

    if im.mode in ("LA", "RGBA"):
        canvas = Image.new("RGB", im.size, tuple(background))
        canvas.paste(im.convert("RGB"), mask=im.getchannel("A"))
        return canvas
    return im.convert("RGB") if im.mode != "RGB" else im


@contextlib.contextmanager
def opened_image(path, max_pixels: int | None = None, draft_size: int | None = None):
    """Open, check and load an image file; yield it EXIF-oriented, mode untouched.

    Every way a file can be bad becomes :class:`UndecodableImage` with a
    reason (empty, unreadable, not an image, truncated, too many pixels),
    including errors raised while the caller works on the image inside the
    ``with`` block. Images above LARGE_IMAGE_PIXELS hold a one-at-a-time slot
    for the whole block: a 10k x 16k RGBA PNG takes ~670 MB per copy while it
    is decoded and resized, and this keeps peak memory bounded however many
    decoder threads run.

    Args:
        path: image file (format detected from content, not the extension),
            or the file's bytes (the Ray engine ships bytes to its workers).
        max_pixels: refuse images with more pixels than this (decompression
            bomb guard, ``data.max_pixels``); None disables the check.
        draft_size: for large JPEGs, decode at a reduced DCT scale that
            stays at least ``2 * draft_size`` on each side.
    """
    from PIL import Image, ImageOps

    if isinstance(path, (bytes, bytearray, memoryview)):
        size, source = len(path), io.BytesIO(path)
    else:
        source = path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UndecodableImage(f"cannot read file: {exc.strerror}") from None
    if size == 0:
        raise UndecodableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below, with a message naming the config key.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise UndecodableImage(too_many_pixels_reason(w, h, max_pixels))
                if draft_size and im.format == "JPEG" and min(w, h) >= 4 * draft_size:
                    im.draft("RGB", (2 * draft_size, 2 * draft_size))
                with _LARGE_DECODES if w * h > LARGE_IMAGE_PIXELS else contextlib.nullcontext():
                    im.load()
                    if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                        im = ImageOps.exif_transpose(im)
                    yield im
    except UndecodableImage:
        raise
    except Image.DecompressionBombError as exc:
        # Raised by Image.open itself, before our own check, above Pillow's
        # ceiling (which is also the highest data.max_pixels allowed).
        raise UndecodableImage(f"decompression bomb guard: {exc}; data.max_pixels cannot raise Pillow's ceiling") from None
    except Image.UnidentifiedImageError:
        raise UndecodableImage("not an image file Pillow can read (wrong extension or corrupt header)") from None
    except Exception as exc:  # noqa: BLE001 - third-party decoders raise anything on bad bytes
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise UndecodableImage(f"cannot decode: {reason}") from None


def decode_image(path, image_size: int, resize: str = "stretch", background=(255, 255, 255), max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file to a ``(image_size, image_size, 3)`` uint8 RGB array.

    EXIF orientation is applied; palette/alpha images are composited over
    ``background``; grayscale, CMYK and 16-bit images are converted to RGB;
    animated images give their first frame. Large JPEGs are decoded at a
    reduced scale (still at least 2x the target) so huge photos cost little.

    Args:
        path: image file (format detected from content, not the extension).
        image_size: output side in pixels.
        resize: ``'stretch'`` (resize the whole image, ignoring aspect),
            ``'center_crop'`` (crop the central square, then resize), ``'pad'``
            (fit the whole image, aspect kept, pad with ``background``) or
            ``'trim_pad'`` (crop to the content, :func:`content_box`, then pad).
        background: RGB triple that transparent pixels are composited over.
        max_pixels: refuse images with more pixels than this (decompression
            bomb guard); None disables the check.

    Raises:
        UndecodableImage: with the reason (empty, truncated, not an image,
            too many pixels, ...).
    """
    with opened_image(path, max_pixels, draft_size=image_size) as im:
        return finish_image(im, image_size, resize, background)


def too_many_pixels_reason(w: int, h: int, max_pixels: int) -> str:
    """Skip reason for a ``w`` x ``h`` image above ``max_pixels``, with the right advice."""
    advice = (
        "raise data.max_pixels if the image is genuine"
        if max_pixels < DEFAULT_MAX_PIXELS
        else "downscale the file if it is genuine (this is Pillow's ceiling)"
    )
    return f"decompression bomb guard: {w}x{h} = {w * h:,} pixels exceeds data.max_pixels = {max_pixels:,}; {advice}"


def finish_image(im, image_size: int, resize: str, background) -> np.ndarray:
    """An opened (EXIF-oriented) Pillow image -> ``(image_size, image_size, 3)`` uint8:
    mode normalised, resized per ``resize``, alpha composited over ``background``.
    What :func:`decode_image` does after opening the file; tiles reuse it per crop."""
    from PIL import Image

    im = to_basic_mode(im)
    box = model_box(im, resize, background)
    if resize in PADDED_POLICIES:
        left, top, width, height = pad_window((box[2] - box[0], box[3] - box[1]), image_size)
        inner = composited(im.resize((width, height), Image.BILINEAR, box=box, reducing_gap=3.0), background)
        im = Image.new("RGB", (image_size, image_size), tuple(background))
        im.paste(inner, (left, top))
    else:
        if im.size != (image_size, image_size) or box != (0, 0, *im.size):
            # Pillow's bilinear filter antialiases when shrinking (and premultiplies
            # alpha); reducing_gap first box-reduces very large images, bounding
            # time. Cropping through `box` avoids a full-size copy.
            im = im.resize((image_size, image_size), Image.BILINEAR, box=box, reducing_gap=3.0)
        im = composited(im, background)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.shape != (image_size, image_size, 3):  # defensive: never feed a wrong shape downstream
        raise UndecodableImage(f"decoded to unexpected shape {arr.shape}")
    return arr

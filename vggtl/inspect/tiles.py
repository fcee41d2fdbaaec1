"""Tiled predictions: classify R x C crops of one image and aggregate them.

A classifier trained on single-object images says little about a photo with
several objects, or one small object in a large scene. Cutting the image into
a grid of (optionally overlapping) tiles and classifying each tile shows what
is where; the aggregate keeps, for each class, its highest probability over
the tiles ("is there a bird anywhere?"), so it does not sum to 1.

Each tile is decoded exactly like a whole image during extraction (same alpha
compositing, mode conversion, resize policy and filter): the full image is
decoded once at full size, with EXIF orientation and the ``data.max_pixels``
guard, then every tile box is cut from it and finished by the same code as
:func:`vggtl.data.decode_image`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vggtl import data
from vggtl.errors import VggtlError

MAX_GRID = 16
MAX_OVERLAP = 0.9
_GRID = re.compile(r"^(\d+)x(\d+)$")


def parse_grid(text: str) -> tuple[int, int]:
    """Parse ``'RxC'`` (e.g. ``'2x3'``: 2 rows, 3 columns) strictly.

    Args:
        text: ``ROWSxCOLS`` with a lower-case ``x`` and integers in
            ``[1, MAX_GRID]``.

    Returns:
        ``(rows, cols)``.

    Raises:
        VggtlError: anything else, e.g. ``'2by2'``, ``'0x2'``, ``'2x'``.
    """
    match = _GRID.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise VggtlError(f"--tiles {text!r}: expected ROWSxCOLS such as 2x2 or 3x4 (two integers joined by 'x')")
    rows, cols = int(match.group(1)), int(match.group(2))
    if not (1 <= rows <= MAX_GRID and 1 <= cols <= MAX_GRID):
        raise VggtlError(f"--tiles {text!r}: rows and columns must each be between 1 and {MAX_GRID}, got {rows}x{cols}")
    return rows, cols


def check_overlap(overlap) -> float:
    """Return ``overlap`` as a float after checking it lies in ``[0, MAX_OVERLAP)``.

    Raises:
        VggtlError: not a number, or out of range.
    """
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise VggtlError(f"--overlap {overlap!r}: expected a fraction such as 0.25") from None
    if not 0.0 <= value < MAX_OVERLAP:
        raise VggtlError(
            f"--overlap {overlap!r}: must be >= 0 and < {MAX_OVERLAP} (fraction of a tile shared with its neighbour)"
        )
    return value


def _axis(length: int, n: int, overlap: float) -> list[tuple[int, int]]:
    """``n`` intervals covering ``[0, length)``, neighbours sharing ``overlap`` of a tile."""
    # n tiles of size t, each starting t*(1-overlap) after the previous,
    # end exactly at length: t * (n - (n-1)*overlap) = length.
    size = length / (n - (n - 1) * overlap)
    step = size * (1.0 - overlap)
    spans = []
    for i in range(n):
        start = int(round(i * step))
        end = length if i == n - 1 else int(round(i * step + size))
        spans.append((start, max(end, start + 1)))
    return spans


def tile_boxes(width: int, height: int, rows: int, cols: int, overlap: float = 0.0) -> list[tuple[int, int, int, int]]:
    """Pixel boxes of an R x C grid of tiles covering a ``width`` x ``height`` image.

    Tiles of one row (column) have equal size up to a pixel of rounding;
    neighbours share ``overlap`` of a tile; together they cover every pixel.

    Args:
        width: image width in pixels, >= ``cols``.
        height: image height in pixels, >= ``rows``.
        rows: number of tile rows, >= 1.
        cols: number of tile columns, >= 1.
        overlap: fraction of a tile shared with each neighbour, in
            ``[0, 0.9)``; 0 gives a plain partition.

    Returns:
        ``rows * cols`` boxes ``(left, top, right, bottom)`` (right/bottom
        exclusive, as Pillow's ``crop``), row by row from the top left.

    Raises:
        ValueError: non-integer or non-positive sizes, more tiles than
            pixels along an axis, or ``overlap`` out of range.
    """
    for name, value in (("width", width), ("height", height), ("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cols > width or rows > height:
        raise ValueError(f"a {rows}x{cols} grid does not fit a {width}x{height} image (at least 1 pixel per tile)")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < MAX_OVERLAP:
        raise ValueError(f"overlap must be a number in [0, {MAX_OVERLAP}), got {overlap!r}")
    xs = _axis(int(width), int(cols), float(overlap))
    ys = _axis(int(height), int(rows), float(overlap))
    return [(x0, y0, x1, y1) for (y0, y1) in ys for (x0, x1) in xs]


# --------------------------------------------------------------------------- decoding


def open_full(path, max_pixels: int | None = None):
    """Decode an image file at full size, EXIF orientation applied, mode untouched.

    Args:
        path: image file.
        max_pixels: refuse images with more pixels (decompression-bomb guard,
            ``data.max_pixels``); None disables the check.

    Returns:
        A loaded Pillow image (any mode; alpha kept for compositing).

    Raises:
        vggtl.data.UndecodableImage: with the same reasons as
            :func:`vggtl.data.decode_image`.
    """
    # Loaded pixels stay valid after the file closes.
    with data.opened_image(path, max_pixels) as im:
        return im


def decode_full_rgb(path, background=(255, 255, 255), max_pixels: int | None = None) -> np.ndarray:
    """The whole image as ``(H, W, 3)`` uint8 RGB, transparency composited over ``background``.

    Used for Grad-CAM overlays, which are drawn on the original picture.

    Raises:
        vggtl.data.UndecodableImage: see :func:`open_full`.
    """
    im = data.to_basic_mode(open_full(path, max_pixels))
    return np.asarray(data.composited(im, background), dtype=np.uint8)


@dataclass(frozen=True)
class TileGrid:
    """An R x C grid of tiles, neighbours sharing ``overlap`` of a tile (see :func:`tile_boxes`)."""

    rows: int
    cols: int
    overlap: float = 0.0


def decode_tiles(path, grid: TileGrid, decode: data.DecodeSettings):
    """Decode the tiles of one image, each like a whole image for the model.

    Args:
        path: image file.
        grid: the tiles' rows, columns and overlap.
        decode: how each tile becomes model input (size, ``data.resize``
            policy, background) and the full image's decompression-bomb guard.

    Returns:
        ``((width, height), boxes, tiles)`` where ``tiles`` is a
        ``(rows * cols, image_size, image_size, 3)`` uint8 array.

    Raises:
        vggtl.data.UndecodableImage: the file cannot be decoded, or it is too
            small for the grid.
    """
    full = open_full(path, decode.max_pixels)
    try:
        boxes = tile_boxes(full.width, full.height, grid.rows, grid.cols, grid.overlap)
    except ValueError as exc:
        raise data.UndecodableImage(f"cannot tile: {exc}") from None
    # data.finish_image is what decode_image runs after opening the file: mode
    # conversion, resize policy, Pillow bilinear, alpha compositing.
    tiles = np.stack([data.finish_image(full.crop(box), decode.image_size, decode.resize, decode.background) for box in boxes])
    return (full.width, full.height), boxes, tiles


# --------------------------------------------------------------------------- predictions


@dataclass
class TiledPrediction:
    """Per-tile class probabilities of one image.

    Attributes:
        path: the image file.
        size: ``(width, height)`` of the full image (after EXIF orientation).
        grid: ``(rows, cols)``.
        overlap: fraction of a tile shared with each neighbour.
        boxes: ``(left, top, right, bottom)`` of each tile, row by row.
        probs: ``(n_tiles, n_classes)`` probabilities.
    """

    path: str
    size: tuple[int, int]
    grid: tuple[int, int]
    overlap: float
    boxes: list[tuple[int, int, int, int]]
    probs: np.ndarray

    @property
    def aggregate(self) -> np.ndarray:
        """``(n_classes,)``: each class's highest probability over the tiles."""
        return self.probs.max(axis=0)


def predict_tiles(path, grid: TileGrid, predict_fn, decode: data.DecodeSettings) -> TiledPrediction:
    """Classify the R x C tiles of one image.

    Args:
        path: image file.
        grid: the tiles' rows, columns and overlap.
        predict_fn: callable mapping a ``(n, image_size, image_size, 3)``
            uint8 batch to ``(n, n_classes)`` probabilities.
        decode: how each tile becomes model input, see :func:`decode_tiles`.

    Raises:
        vggtl.data.UndecodableImage: see :func:`decode_tiles`.
    """
    size, boxes, tiles = decode_tiles(path, grid, decode)
    probs = np.asarray(predict_fn(tiles))
    return TiledPrediction(str(path), size, (grid.rows, grid.cols), grid.overlap, boxes, probs)


def top_indices(probs, k: int) -> list[int]:
    """Indices of the ``k`` largest values, largest first (ties: lower index first)."""
    return [int(i) for i in np.argsort(-np.asarray(probs), kind="stable")[:k]]


def table_lines(result: TiledPrediction, names, top_k: int) -> list[str]:
    """Human-readable per-tile table plus the aggregate's top ``top_k``.

    Args:
        result: from :func:`predict_tiles`.
        names: display name of each class, in output order.
        top_k: classes shown for the aggregate.
    """
    rows, cols = result.grid
    width, height = result.size
    lines = [f"{result.path}  ({width}x{height}, {rows}x{cols} tiles, overlap {result.overlap:g})"]
    lines.append(f"  {'tile':>4}  {'row,col':>7}  {'box (left, top, right, bottom)':<30}  {'top label':<20}  prob")
    for i, (box, p) in enumerate(zip(result.boxes, result.probs)):
        best = top_indices(p, 1)[0]
        where = f"{i // cols},{i % cols}"
        lines.append(f"  {i:>4}  {where:>7}  {str(box):<30}  {names[best]:<20}  {p[best]:.3f}")
    agg = result.aggregate
    top = "  ".join(f"{names[j]} {agg[j]:.3f}" for j in top_indices(agg, top_k))
    lines.append(f"  aggregate (max over tiles): {top}")
    return lines


def to_json(result: TiledPrediction, entry, top_k: int) -> dict:
    """JSON-ready dict of ``result``; ``entry(class_index, probability)`` makes one label record."""
    return {
        "path": result.path,
        "size": list(result.size),
        "grid": list(result.grid),
        "overlap": result.overlap,
        "tiles": [
            {"index": i, "box": list(box), "top": [entry(j, round(float(p[j]), 6)) for j in top_indices(p, top_k)]}
            for i, (box, p) in enumerate(zip(result.boxes, result.probs))
        ],
        "aggregate": [entry(j, round(float(result.aggregate[j]), 6)) for j in top_indices(result.aggregate, top_k)],
    }


@dataclass(frozen=True)
class TileLabels:
    """How tiled predictions name classes: ``names`` for the table,
    ``entry(class_index, probability) -> dict`` for JSON, ``top_k`` shown."""

    names: list[str]
    entry: Callable[[int, float], dict]
    top_k: int


def print_tiled_predictions(paths, grid: TileGrid, predict_fn, decode: data.DecodeSettings, labels: TileLabels,
                            as_json: bool) -> int:
    """The ``--tiles`` mode of ``predict`` and ``classify``: tile, predict and print each path.

    Args:
        paths: image files.
        grid: from :func:`parse_grid` and :func:`check_overlap`.
        predict_fn: uint8 batch -> probabilities.
        decode: how each tile becomes model input (size, resize, background, pixel limit).
        labels: class names and how many are shown per tile and in the aggregate.
        as_json: print JSON lines instead of tables.

    Returns:
        How many paths could not be decoded (each reported on stderr).
    """
    import json
    import sys

    failures = 0
    for path in paths:
        try:
            result = predict_tiles(path, grid, predict_fn, decode)
        except data.UndecodableImage as exc:
            failures += 1
            print(f"{path}: skipped: {exc}", file=sys.stderr)
            if as_json:
                print(json.dumps({"path": str(path), "error": str(exc)}))
            continue
        if as_json:
            print(json.dumps(to_json(result, labels.entry, labels.top_k)))
        else:
            print("\n".join(table_lines(result, labels.names, labels.top_k)))
    return failures

"""Tile grids, tile decoding and per-tile predictions with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vggtl import data
from vggtl.data import DecodeSettings
from vggtl.inspect import tiles
from vggtl.inspect.tiles import TileGrid
from vggtl.errors import VggtlError

QUADRANT_COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "white": (250, 250, 250)}


def covered(boxes, width, height) -> np.ndarray:
    count = np.zeros((height, width), int)
    for left, top, right, bottom in boxes:
        count[top:bottom, left:right] += 1
    return count


@pytest.mark.parametrize("width,height,rows,cols", [(100, 60, 2, 2), (101, 37, 3, 4), (7, 5, 5, 7), (640, 480, 1, 1)])
def test_partition_covers_every_pixel_once(width, height, rows, cols):
    boxes = tiles.tile_boxes(width, height, rows, cols)
    assert len(boxes) == rows * cols
    assert (covered(boxes, width, height) == 1).all()
    widths = {right - left for left, _, right, _ in boxes}
    assert max(widths) - min(widths) <= 1  # equal up to rounding


def test_row_major_order_and_exact_boxes():
    assert tiles.tile_boxes(100, 60, 2, 2) == [(0, 0, 50, 30), (50, 0, 100, 30), (0, 30, 50, 60), (50, 30, 100, 60)]


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.8])
def test_overlap_shares_the_requested_fraction(overlap):
    width, height = 1000, 800
    boxes = tiles.tile_boxes(width, height, 2, 3, overlap)
    assert (covered(boxes, width, height) >= 1).all()
    first, second = boxes[0], boxes[1]
    tile_width = first[2] - first[0]
    shared = first[2] - second[0]
    assert shared == pytest.approx(overlap * tile_width, abs=1)
    assert boxes[2][2] == width and boxes[-1][3] == height


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 10, 1, 1), "width must be a positive integer"),
        ((10, 10.5, 1, 1), "height must be a positive integer"),
        ((10, 10, 0, 1), "rows must be a positive integer"),
        ((10, 10, 1, True), "cols must be a positive integer"),
        ((3, 10, 1, 4), "does not fit a 3x10 image"),
        ((10, 10, 2, 2, 0.9), r"overlap must be a number in \[0, 0.9\)"),
        ((10, 10, 2, 2, -0.1), "overlap must be"),
        ((10, 10, 2, 2, "0.1"), "overlap must be"),
    ],
)
def test_tile_boxes_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        tiles.tile_boxes(*args)


def test_parse_grid():
    assert tiles.parse_grid("2x2") == (2, 2)
    assert tiles.parse_grid("1x16") == (1, 16)
    for bad in ("2by2", "2X2", "2x", "x2", "2x2x2", "2 x 2", "-1x2", "1.5x2", ""):
        with pytest.raises(VggtlError, match="expected ROWSxCOLS such as 2x2"):
            tiles.parse_grid(bad)
    for bad in ("0x2", "2x0", "17x1"):
        with pytest.raises(VggtlError, match="between 1 and 16"):
            tiles.parse_grid(bad)


def test_check_overlap():
    assert tiles.check_overlap("0.25") == 0.25
    assert tiles.check_overlap("0") == 0.0
    with pytest.raises(VggtlError, match="expected a fraction"):
        tiles.check_overlap("half")
    for bad in ("0.9", "1", "-0.1"):
        with pytest.raises(VggtlError, match=r"must be >= 0 and < 0.9"):
            tiles.check_overlap(bad)


def quadrant_image(path, size=(80, 60), mode="RGB"):
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    width, height = size
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = QUADRANT_COLORS["red"]
    arr[: height // 2, width // 2 :] = QUADRANT_COLORS["green"]
    arr[height // 2 :, : width // 2] = QUADRANT_COLORS["blue"]
    arr[height // 2 :, width // 2 :] = QUADRANT_COLORS["white"]
    Image.fromarray(arr).convert(mode).save(path)
    return path


def color_classifier(batch):
    """Probabilities over (red, green, blue, white) from the mean color: a known answer."""
    means = batch.reshape(len(batch), -1, 3).mean(axis=1)
    refs = np.array(list(QUADRANT_COLORS.values()), float)
    dist = np.linalg.norm(means[:, None, :] - refs[None], axis=-1)
    logits = -dist / 10.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_each_tile_sees_its_quadrant(tmp_path):
    path = quadrant_image(tmp_path / "q.png")
    result = tiles.predict_tiles(path, TileGrid(2, 2), color_classifier, DecodeSettings(16))
    names = list(QUADRANT_COLORS)
    assert [names[int(np.argmax(p))] for p in result.probs] == ["red", "green", "blue", "white"]
    assert result.size == (80, 60) and result.grid == (2, 2)
    assert result.boxes == [(0, 0, 40, 30), (40, 0, 80, 30), (0, 30, 40, 60), (40, 30, 80, 60)]
    np.testing.assert_allclose(result.aggregate, result.probs.max(axis=0))
    # the whole image at once is a mixture: no class is as sure as on its own tile
    whole = color_classifier(data.decode_image(path, 16)[None])[0]
    assert (result.aggregate > whole).all()


def test_one_tile_decodes_like_the_whole_image(tmp_path):
    for mode in ("RGB", "RGBA", "P", "L"):
        path = quadrant_image(tmp_path / f"q_{mode}.png", mode=mode)
        for resize in ("stretch", "center_crop"):
            _, boxes, decoded = tiles.decode_tiles(path, TileGrid(1, 1), DecodeSettings(24, resize, (0, 0, 0)))
            assert boxes == [(0, 0, 80, 60)]
            np.testing.assert_array_equal(decoded[0], data.decode_image(path, 24, resize, (0, 0, 0)))


def test_exif_orientation_is_applied_before_tiling(tmp_path):
    path = tmp_path / "rotated.jpg"
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (230, 10, 10)  # red left half as stored
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed: red ends up on top
    im.save(path, exif=exif, quality=95)
    size, boxes, decoded = tiles.decode_tiles(path, TileGrid(2, 1), DecodeSettings(8))
    assert size == (40, 80)
    top, bottom = decoded[0].reshape(-1, 3).mean(axis=0), decoded[1].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and bottom[0] < 50


def test_transparency_is_composited_over_the_background(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(path)
    full = tiles.decode_full_rgb(path, background=(0, 0, 255))
    assert full.shape == (20, 20, 3) and (full == (0, 0, 255)).all()
    _, _, decoded = tiles.decode_tiles(path, TileGrid(2, 2), DecodeSettings(4, background=(0, 255, 0)))
    assert (decoded == (0, 255, 0)).all()


def test_undecodable_and_oversized_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(data.UndecodableImage, match="not an image file"):
        tiles.decode_tiles(bad, TileGrid(2, 2), DecodeSettings(8))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(data.UndecodableImage, match="empty file"):
        tiles.decode_full_rgb(empty)
    big = quadrant_image(tmp_path / "big.png")
    with pytest.raises(data.UndecodableImage, match="exceeds data.max_pixels = 100"):
        tiles.decode_tiles(big, TileGrid(2, 2), DecodeSettings(8, max_pixels=100))
    tiny = quadrant_image(tmp_path / "tiny.png", size=(3, 3))
    with pytest.raises(data.UndecodableImage, match="cannot tile: a 4x4 grid does not fit a 3x3 image"):
        tiles.decode_tiles(tiny, TileGrid(4, 4), DecodeSettings(8))


def test_table_and_json(tmp_path):
    path = quadrant_image(tmp_path / "q.png")
    result = tiles.predict_tiles(path, TileGrid(2, 2), color_classifier, DecodeSettings(16))
    names = list(QUADRANT_COLORS)
    lines = tiles.table_lines(result, names, top_k=2)
    assert lines[0].endswith("(80x60, 2x2 tiles, overlap 0)")
    assert "0,0" in lines[2] and "(0, 0, 40, 30)" in lines[2] and "red" in lines[2]
    assert "1,1" in lines[5] and "white" in lines[5]
    assert lines[-1].startswith("  aggregate (max over tiles): ")
    record = tiles.to_json(result, lambda i, p: {"label": names[i], "probability": p}, top_k=4)
    assert record["grid"] == [2, 2] and record["size"] == [80, 60]
    assert [t["top"][0]["label"] for t in record["tiles"]] == ["red", "green", "blue", "white"]
    assert record["tiles"][3]["box"] == [40, 30, 80, 60]
    aggregate = {e["label"]: e["probability"] for e in record["aggregate"]}
    for name in names:
        assert aggregate[name] == pytest.approx(max(next(e["probability"] for e in t["top"] if e["label"] == name) for t in record["tiles"]))

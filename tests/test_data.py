"""Tests for vggtl.data: scanning and splitting image trees, decoding any image.

Images are tiny and generated with Pillow in ``tmp_path``; TensorFlow is
never imported.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from vggtl import data
from vggtl.config import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from vggtl.data import UndecodableImage, decode_image, scan
from vggtl.errors import DataError

from conftest import COLORS, make_dataset, make_image

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def do_scan(root, seed=7, val=0.25, test=0.25, extensions=IMAGE_EXTENSIONS, workers=2):
    return scan(root, extensions, workers=workers).with_split(seed, val, test)


def splits_of(ds) -> dict[str, str]:
    return {f.relpath: f.split for f in ds.files}


def solid(path, color, size=(32, 32), mode="RGB", **save):
    """A single-color image saved at ``path`` (format from the extension unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, **save)
    return path


def bands(colors, size=(96, 32), mode="RGB"):
    """Vertical bands of equal width, left to right."""
    w, h = size
    arr = np.zeros((h, w, len(colors[0])), np.uint8)
    edges = np.linspace(0, w, len(colors) + 1).astype(int)
    for color, a, b in zip(colors, edges[:-1], edges[1:]):
        arr[:, a:b] = color
    return Image.fromarray(arr, mode)


def close(pixel, color, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(color, int)) <= tol))


def pre_split(root, splits=("train", "val", "test"), per_class=(10, 4, 4), classes=("red", "green", "blue")):
    for i, (name, n) in enumerate(zip(splits, per_class)):
        make_dataset(root / name, per_class=n, classes=classes, start=100 * i)
    return root


# =========================================================================== scanning


def test_class_per_folder(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    ds = do_scan(root)
    assert ds.layout == "class-folders"
    assert ds.class_names == ["blue", "green", "red"]
    assert ds.root == root.resolve()
    assert len(ds.files) == 36
    for f in ds.files:
        assert f.path.is_absolute() and f.path.is_file()
        cls, name = f.relpath.split("/")
        assert ds.class_names[f.label] == cls and name.startswith(cls)
        assert f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest()
        assert f.split in data.SPLITS
    counts = ds.counts()
    assert {c: sum(counts[s][c] for s in data.SPLITS) for c in ds.class_names} == {"blue": 12, "green": 12, "red": 12}
    assert all(counts[s][c] > 0 for s in data.SPLITS for c in ds.class_names)


def test_classes_are_sorted_folder_names(tmp_path):
    root = tmp_path / "ds"
    for i, name in enumerate(["zebra", "Apple", "mango", "10", "9"]):
        for j in range(12):
            make_image(root / name / f"{j}.png", COLORS["red"], size=8, seed=100 * i + j)
    ds = do_scan(root, val=0.2, test=0.2, seed=3)
    assert ds.class_names == sorted(["zebra", "Apple", "mango", "10", "9"]) == ["10", "9", "Apple", "mango", "zebra"]
    assert {ds.class_names[f.label] for f in ds.files if "zebra/" in f.relpath} == {"zebra"}


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    make_image(root / ".hidden_class" / "a.png", COLORS["red"])  # not a class
    make_image(root / "__MACOSX" / "red" / "a.png", COLORS["red"])  # not a class
    make_image(root / "red" / ".thumbs" / "t.png", COLORS["red"])  # hidden subfolder
    make_image(root / "red" / ".hidden.png", COLORS["red"])  # hidden file
    make_image(root / "red" / "__pycache__" / "x.png", COLORS["red"])
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("files at the root are not classes")
    ds = do_scan(root)
    assert ds.class_names == ["blue", "green", "red"]
    assert len(ds.files) == 36
    assert not any("/." in "/" + f.relpath or "__" in f.relpath or f.relpath.endswith(".txt") for f in ds.files)


def test_nested_subfolders_inside_a_class_are_included(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    make_image(root / "red" / "2020" / "jan" / "deep.png", COLORS["red"], seed=99)
    make_image(root / "green" / "sub" / "x.png", COLORS["green"], seed=98)
    ds = do_scan(root)
    by_path = {f.relpath: ds.class_names[f.label] for f in ds.files}
    assert by_path["red/2020/jan/deep.png"] == "red"
    assert by_path["green/sub/x.png"] == "green"
    assert ds.class_names == ["blue", "green", "red"]  # subfolders are not classes
    assert len(ds.files) == 38


def test_extension_filter_is_case_insensitive(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    make_image(root / "red" / "upper.PNG", COLORS["red"], seed=50, fmt="PNG")
    make_image(root / "red" / "mixed.Jpg", COLORS["red"], seed=51, fmt="JPEG")
    make_image(root / "red" / "other.jpeg", COLORS["red"], seed=52, fmt="JPEG")
    make_image(root / "red" / "anim.gif", COLORS["red"], seed=53)
    names = {f.relpath for f in do_scan(root, extensions=(".png", ".jpg")).files}
    assert {"red/upper.PNG", "red/mixed.Jpg"} <= names
    assert not {"red/other.jpeg", "red/anim.gif"} & names
    # scan itself does not depend on the caller lower-casing the extensions
    assert {f.relpath for f in do_scan(root, extensions=(".PNG", ".JPG")).files} == names
    assert len(do_scan(root).files) == 40  # default: every image extension


@pytest.mark.parametrize("classes", [("red",), ()])
def test_fewer_than_two_classes(tmp_path, classes):
    root = make_dataset(tmp_path / "only", per_class=3, classes=classes)
    root.mkdir(exist_ok=True)
    (root / ".git").mkdir()
    with pytest.raises(DataError, match=rf"{re.escape(str(root))}: found {len(classes)} class folder\(s\) \(({'red' if classes else 'none'})\); need at least 2"):
        do_scan(root)


def test_empty_class_folder_is_named(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    empty = root / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    make_image(empty / ".hidden.png", COLORS["red"])
    with pytest.raises(DataError, match=r"class folder '.*/ds/empty' contains no image \(looked for \.jpg.*\); add images or remove the folder") as info:
        do_scan(root)
    message = str(info.value)
    assert not any(str(root / name) in message for name in ("red", "green", "blue"))


def test_data_root_not_a_directory(tmp_path):
    with pytest.raises(DataError, match=r"data root '.*nope' is not a directory"):
        do_scan(tmp_path / "nope")


# --------------------------------------------------------------------------- pre-split layout


def test_pre_split_train_val_test(tmp_path):
    root = pre_split(tmp_path / "ds")
    ds = do_scan(root)
    assert ds.layout == "pre-split"
    assert ds.class_names == ["blue", "green", "red"]
    assert len(ds.files) == 3 * 18
    for f in ds.files:
        folder, cls, _ = f.relpath.split("/")
        assert f.split == folder and ds.class_names[f.label] == cls
    assert {s: sum(n.values()) for s, n in ds.counts().items()} == {"train": 30, "val": 12, "test": 12}


def test_validation_folder_is_an_alias_of_val(tmp_path):
    root = pre_split(tmp_path / "ds", splits=("train", "validation", "test"))
    ds = do_scan(root)
    assert ds.layout == "pre-split"
    assert {f.split for f in ds.files if f.relpath.startswith("validation/")} == {"val"}
    assert sum(ds.counts()["val"].values()) == 12


def test_both_val_and_validation_are_refused(tmp_path):
    root = pre_split(tmp_path / "ds", splits=("train", "val", "validation"))
    with pytest.raises(DataError, match=r"has both val/, validation/; keep one validation folder"):
        do_scan(root)


def test_missing_test_is_carved_from_train(tmp_path):
    root = pre_split(tmp_path / "ds", splits=("train", "val"), per_class=(16, 4))
    ds = do_scan(root, val=0.25, test=0.3)
    from_train = [f for f in ds.files if f.relpath.startswith("train/")]
    assert {f.split for f in from_train} == {"train", "test"}  # val/ exists: nothing carved for val
    assert {f.split for f in ds.files if f.relpath.startswith("val/")} == {"val"}
    # the carve is the split rule with val=0: per class, round(0.3 * 16) = 5 test images
    for name in ("red", "green", "blue"):
        carved = [f for f in from_train if f.relpath.startswith(f"train/{name}/")]
        assert sum(f.split == "test" for f in carved) == 5


def test_missing_val_is_carved_from_train(tmp_path):
    root = pre_split(tmp_path / "ds", splits=("train", "test"), per_class=(16, 4))
    ds = do_scan(root, val=0.3, test=0.25)
    assert {f.split for f in ds.files if f.relpath.startswith("train/")} == {"train", "val"}
    assert {f.split for f in ds.files if f.relpath.startswith("test/")} == {"test"}


def test_mismatched_class_folders_across_splits(tmp_path):
    root = pre_split(tmp_path / "ds")
    shutil.rmtree(root / "val" / "blue")
    make_image(root / "val" / "purple" / "p.png", COLORS["blue"])
    with pytest.raises(DataError, match=r"val: class folders \['green', 'purple', 'red'\] differ from train/'s \['blue', 'green', 'red'\]"):
        do_scan(root)


def test_extra_folder_beside_train_is_refused(tmp_path):
    root = pre_split(tmp_path / "ds")
    make_image(root / "extras" / "x.png", COLORS["red"])
    with pytest.raises(DataError, match=r"looks pre-split \(has test/, train/, val/\) but also holds extras/; move those under train/"):
        do_scan(root)


def test_extra_file_beside_train_is_fine(tmp_path):
    root = pre_split(tmp_path / "ds")
    (root / "README.txt").write_text("hello")
    assert do_scan(root).layout == "pre-split"


def test_empty_class_in_a_held_out_split_is_named(tmp_path):
    root = pre_split(tmp_path / "ds")
    shutil.rmtree(root / "test" / "green")
    (root / "test" / "green").mkdir()
    with pytest.raises(DataError, match=r"class folder '.*/ds/test/green' contains no image"):
        do_scan(root)


# --------------------------------------------------------------------------- split stability


def test_same_content_and_seed_give_the_same_split(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    assert splits_of(do_scan(root)) == splits_of(do_scan(root, workers=1))


def test_adding_images_moves_only_quota_boundaries(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    before = splits_of(do_scan(root))
    make_image(root / "red" / "added.png", COLORS["red"], seed=4242)
    after = splits_of(do_scan(root))
    moved = {k for k in before if after[k] != before[k]}
    assert all(k.startswith("red/") for k in moved)  # other classes never change
    assert len(moved) <= 2  # at most one image per quota boundary (test/val, val/train)


def test_moving_or_renaming_the_root_changes_nothing(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    ds = do_scan(root)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(root, moved)
    ds2 = do_scan(moved)
    assert ds2.root == moved.resolve() != ds.root
    assert splits_of(ds2) == splits_of(ds)
    assert ds2.digest() == ds.digest()


def test_a_different_seed_gives_a_different_split(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    a, b = splits_of(do_scan(root, seed=1)), splits_of(do_scan(root, seed=2))
    assert a.keys() == b.keys() and a != b


def test_every_class_gets_its_quota(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    for seed in range(10):
        counts = do_scan(root, seed=seed, val=0.25, test=0.25).counts()
        assert all(counts[s] == {"red": n, "green": n, "blue": n} for s, n in (("train", 6), ("val", 3), ("test", 3)))


def test_a_class_too_small_to_split_is_named_with_its_count(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12, classes=("green", "blue"))
    make_image(root / "red" / "a.png", COLORS["red"], seed=5)
    make_image(root / "red" / "b.png", COLORS["red"], seed=6)
    with pytest.raises(DataError, match=r"class 'red' has 2 usable image\(s\); it needs at least 3 \(one for training, one for val, one for test\)"):
        do_scan(root)
    assert do_scan(root, val=0.0).counts()["test"]["red"] == 1  # one held-out split needs only 2


def test_split_fraction_zero_leaves_that_split_empty(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    counts = do_scan(root, val=0.0).counts()
    assert sum(counts["val"].values()) == 0 and all(n == 3 for n in counts["test"].values())


def test_split_digest_follows_the_split_and_content_digest_does_not(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    a, b = do_scan(root, seed=1), do_scan(root, seed=2)
    assert a.content_digest() == b.content_digest()
    assert a.split_digest() != b.split_digest() and a.digest() != b.digest()


# --------------------------------------------------------------------------- warnings, digest


def test_small_class_warning(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=20, classes=("red", "green"))
    make_dataset(root, per_class=12, classes=("blue",))
    ds = do_scan(root)
    small = [w for w in ds.warnings if "only" in w]
    assert small == ["class 'blue' has only 12 images (< 20); its metrics will be noisy"]


def test_no_warnings_for_a_clean_dataset(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=20, classes=("red", "green"))
    assert do_scan(root).warnings == []


def test_identical_image_under_two_classes_warns(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    shutil.copy(root / "red" / "red_003.png", root / "green" / "copy.png")
    shutil.copy(root / "red" / "red_004.png", root / "red" / "same_class_copy.png")  # same class: fine
    ds = do_scan(root)
    clashes = [w for w in ds.warnings if w.startswith("identical image")]
    assert clashes == ["identical image under different classes: green/copy.png, red/red_003.png"]


def test_digest_tracks_content_and_files_not_location(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=12)
    d0 = do_scan(root).digest()
    assert do_scan(root).digest() == d0
    make_image(root / "red" / "red_000.png", COLORS["red"], seed=12345)  # same name, new content
    d1 = do_scan(root).digest()
    assert d1 != d0
    make_image(root / "blue" / "new.png", COLORS["blue"], seed=777)
    d2 = do_scan(root).digest()
    assert d2 not in (d0, d1)
    shutil.move(root, tmp_path / "moved")
    assert do_scan(tmp_path / "moved").digest() == d2
    (tmp_path / "moved" / "blue" / "new.png").unlink()
    assert do_scan(tmp_path / "moved").digest() == d1


# =========================================================================== decoding


def decode(path, size=32, **kw):
    arr = decode_image(path, size, **kw)
    assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
    return arr


@pytest.mark.parametrize(
    "name, save, tol",
    [
        ("a.png", {}, 0),
        ("a.jpg", {"quality": 95}, 12),
        ("a.jpeg", {"quality": 95, "progressive": True}, 12),
        ("a.bmp", {}, 0),
        ("a.gif", {}, 12),
        ("a.webp", {"lossless": True}, 0),
        ("a.webp", {"quality": 90}, 12),
        ("a.tif", {}, 0),
        ("a.tiff", {"compression": "tiff_lzw"}, 0),
    ],
)
@pytest.mark.parametrize("size", [(32, 32), (50, 20)])
def test_common_formats(tmp_path, name, save, tol, size):
    arr = decode(solid(tmp_path / name, RED, size=size, **save))
    assert close(arr.reshape(-1, 3).mean(0), RED, tol)
    assert close(arr[5, 5], RED, max(tol, 1) + 8)


def test_output_size_follows_image_size(tmp_path):
    path = solid(tmp_path / "a.png", GREEN, size=(40, 30))
    for size in (8, 32, 100):
        assert decode(path, size).shape == (size, size, 3)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    arr = decode(solid(tmp_path / "g.jpg", (90, 90, 90), mode="L"))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert close(arr[10, 10], (90, 90, 90), 3)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    blob = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UndecodableImage, match=r"truncated"):
        decode_image(tmp_path / "cut.jpg", 32)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    blob = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UndecodableImage, match=r"truncated"):
        decode_image(tmp_path / "cut.png", 32)


def test_empty_file(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(UndecodableImage, match=r"^empty file \(0 bytes\)$"):
        decode_image(tmp_path / "zero.jpg", 32)


def test_text_file_with_an_image_extension(tmp_path):
    (tmp_path / "notes.png").write_text("these are my holiday notes, not a picture\n")
    with pytest.raises(UndecodableImage, match=r"not an image file Pillow can read"):
        decode_image(tmp_path / "notes.png", 32)


def test_missing_file(tmp_path):
    with pytest.raises(UndecodableImage, match=r"cannot read file"):
        decode_image(tmp_path / "gone.png", 32)


def test_png_with_a_jpg_extension_decodes(tmp_path):
    path = solid(tmp_path / "really_png.jpg", BLUE, format="PNG")
    assert Image.open(path).format == "PNG"
    assert np.array_equal(decode(path), decode(solid(tmp_path / "b.png", BLUE)))
    assert close(decode(path)[0, 0], BLUE, 0)


def test_cmyk_jpeg_is_converted_with_the_right_colors(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    arr = decode(path)
    assert close(arr.reshape(-1, 3).mean(0), (255, 0, 0), 15)


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 120, 250)])
def test_palette_png_with_transparency(tmp_path, background):
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 255, 0, 200, 40, 40] + [0] * (256 * 3 - 6))  # index 0 green but transparent
    im.paste(1, (32, 0, 64, 64))
    im.save(tmp_path / "p.png", transparency=0)
    arr = decode(tmp_path / "p.png", background=background)
    assert tuple(arr[16, 2]) == background
    assert tuple(arr[16, 29]) == (200, 40, 40)


def test_palette_gif_with_transparency(tmp_path):
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 255, 0, 200, 40, 40] + [0] * (256 * 3 - 6))
    im.paste(1, (16, 0, 32, 32))
    im.save(tmp_path / "p.gif", transparency=0)
    arr = decode(tmp_path / "p.gif", background=(0, 0, 0))
    assert tuple(arr[5, 3]) == (0, 0, 0) and tuple(arr[5, 28]) == (200, 40, 40)


def test_palette_without_transparency(tmp_path):
    im = Image.new("P", (32, 32), 1)
    im.putpalette([0, 255, 0, 200, 40, 40] + [0] * (256 * 3 - 6))
    path = tmp_path / "p.png"
    im.save(path)
    assert Image.open(path).mode == "P" and "transparency" not in Image.open(path).info
    assert tuple(decode(path, background=(0, 0, 0))[3, 3]) == (200, 40, 40)


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
@pytest.mark.parametrize("size", [96, 32])  # resized (premultiplied alpha) and not resized
def test_rgba_is_composited_over_the_background(tmp_path, background, size):
    # left: fully transparent with a hidden green; middle: half-transparent black; right: opaque red
    im = bands([(0, 255, 0, 0), (0, 0, 0, 128), (200, 40, 40, 255)], size=(96, 96), mode="RGBA")
    im.save(tmp_path / "a.png")
    arr = decode(tmp_path / "a.png", size, background=background)
    third = size // 3
    assert tuple(arr[size // 2, 1]) == background  # exactly: no hidden green leaks in
    assert tuple(arr[size // 2, third // 2]) == background
    assert tuple(arr[size // 2, size - 2]) == (200, 40, 40)
    expected_mid = np.array(background) * (1 - 128 / 255)
    assert close(arr[size // 2, size // 2], expected_mid, 3)


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
def test_la_is_composited_over_the_background(tmp_path, background):
    im = bands([(50, 0), (100, 255)], size=(64, 64), mode="LA")
    im.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    arr = decode(tmp_path / "la.png", background=background)
    assert tuple(arr[16, 2]) == background
    assert tuple(arr[16, 29]) == (100, 100, 100)


def test_transparent_webp(tmp_path):
    im = bands([(0, 255, 0, 0), (200, 40, 40, 255)], size=(64, 64), mode="RGBA")
    im.save(tmp_path / "a.webp", lossless=True, exact=True)
    arr = decode(tmp_path / "a.webp", background=(0, 0, 0))
    assert tuple(arr[16, 2]) == (0, 0, 0) and tuple(arr[16, 29]) == (200, 40, 40)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path, ext):
    values = np.full((32, 32), 32768, np.uint16)
    values[:, 16:] = 200  # very dark in 16 bits: must not come out as 200/255
    Image.fromarray(values).save(tmp_path / f"g16{ext}")
    assert Image.open(tmp_path / f"g16{ext}").mode.startswith("I")
    arr = decode(tmp_path / f"g16{ext}")
    assert abs(int(arr[5, 3, 0]) - 128) <= 1 and len(set(arr[5, 3])) == 1
    assert arr[5, 28, 0] <= 1
    # a uniformly dark 16-bit image (every value <= 255) is still 16-bit
    Image.fromarray(np.full((32, 32), 200, np.uint16)).save(tmp_path / f"dark{ext}")
    assert decode(tmp_path / f"dark{ext}").max() <= 1


def test_16_bit_gradient_keeps_order(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    row = decode(tmp_path / "ramp.png", 64)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)


def test_float_tiff(tmp_path):
    Image.fromarray(np.full((32, 32), 0.5, np.float32), "F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert abs(int(decode(tmp_path / "f.tif")[4, 4, 0]) - 128) <= 1


def test_one_bit_image(tmp_path):
    im = Image.new("1", (32, 32), 0)
    im.paste(1, (16, 0, 32, 32))
    im.save(tmp_path / "bw.png")
    assert Image.open(tmp_path / "bw.png").mode == "1"
    arr = decode(tmp_path / "bw.png")
    assert tuple(arr[5, 2]) == (0, 0, 0) and tuple(arr[5, 29]) == (255, 255, 255)


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(tmp_path / "anim.gif"), "n_frames", 1) == 3
    assert close(decode(tmp_path / "anim.gif")[8, 8], (255, 0, 0), 4)


def test_animated_webp_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in [(0, 0, 255), (255, 0, 0)]]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert close(decode(tmp_path / "anim.webp")[8, 8], (0, 0, 255), 4)


@pytest.mark.parametrize(
    "orientation, transpose, top_color",
    [
        (6, Image.Transpose.ROTATE_270, RED),  # "rotate 90 CW to display": the left edge goes on top
        (8, Image.Transpose.ROTATE_90, BLUE),  # "rotate 90 CCW to display": the left edge goes to the bottom
        (3, Image.Transpose.ROTATE_180, None),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, transpose, top_color):
    wide = bands([RED, BLUE], size=(64, 32))  # red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = orientation
    wide.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    wide.save(tmp_path / "plain.jpg", quality=95)
    wide.transpose(transpose).save(tmp_path / "manual.png")

    got = decode(tmp_path / "rotated.jpg").astype(int)
    expected = decode(tmp_path / "manual.png").astype(int)
    plain = decode(tmp_path / "plain.jpg").astype(int)
    assert np.abs(got - expected).mean() < 6
    assert np.abs(got - plain).mean() > 50  # really rotated, not ignored
    if top_color is not None:
        other = BLUE if top_color == RED else RED
        assert close(got[3, 16], top_color, 20) and close(got[28, 16], other, 20)
    else:
        assert close(got[16, 3], BLUE, 20) and close(got[16, 28], RED, 20)


def test_image_beyond_max_pixels_is_skipped(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("1", (5000, 5000), 1).save(path)
    assert path.stat().st_size < 100_000

    loaded = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self.size) or original_load(self))
    with pytest.raises(UndecodableImage, match=r"5000x5000 = 25,000,000 pixels exceeds data\.max_pixels = 1,000,000; raise data\.max_pixels"):
        decode_image(path, 32, max_pixels=1_000_000)
    assert (5000, 5000) not in loaded  # refused from the header, before decoding the pixels

    assert tuple(decode(path, max_pixels=25_000_000)[0, 0]) == (255, 255, 255)
    assert tuple(decode(path, max_pixels=None)[0, 0]) == (255, 255, 255)


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` (1-bit gray) with no real pixel data."""

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, None])
def test_image_beyond_pillows_own_ceiling_names_the_config_key(tmp_path, max_pixels):
    # Pillow refuses these itself inside Image.open, before our own check runs.
    path = _png_header_only(tmp_path / "bomb.png", 20_000, 10_000)
    with pytest.raises(UndecodableImage, match=r"decompression bomb guard: .*200000000 pixels.*data\.max_pixels"):
        decode_image(path, 32, max_pixels=max_pixels)


def test_center_crop_versus_stretch(tmp_path):
    bands([RED, GREEN, BLUE], size=(96, 32)).save(tmp_path / "wide.png")
    crop = decode(tmp_path / "wide.png", resize="center_crop")
    assert np.all(crop == GREEN)
    stretch = decode(tmp_path / "wide.png", resize="stretch")
    assert tuple(stretch[16, 1]) == RED and tuple(stretch[16, 16]) == GREEN and tuple(stretch[16, 30]) == BLUE


def test_center_crop_of_a_tall_image(tmp_path):
    bands([RED, GREEN, BLUE], size=(96, 32)).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "tall.png")
    assert np.all(decode(tmp_path / "tall.png", 32, resize="center_crop") == GREEN)


def test_center_crop_of_a_square_image_equals_stretch(tmp_path):
    make_image(tmp_path / "sq.png", COLORS["red"], size=48)
    assert np.array_equal(decode(tmp_path / "sq.png", resize="center_crop"), decode(tmp_path / "sq.png", resize="stretch"))


def test_pad_keeps_the_aspect_and_fills_with_the_background(tmp_path):
    bands([RED, GREEN, BLUE], size=(96, 32)).save(tmp_path / "wide.png")
    for background in [(255, 255, 255), (0, 0, 0)]:
        padded = decode(tmp_path / "wide.png", resize="pad", background=background)
        # 96x32 -> 32x11, centred: rows 10..20 hold the picture, the rest is background
        assert np.all(padded[:9] == background) and np.all(padded[22:] == background)
        assert close(padded[15, 1], RED) and close(padded[15, 16], GREEN) and close(padded[15, 30], BLUE)


def test_trim_pad_crops_transparent_and_background_colored_margins(tmp_path):
    sprite = Image.new("RGBA", (200, 100), (0, 0, 0, 0))  # transparent margins
    sprite.paste((*RED, 255), (50, 40, 150, 60))
    sprite.save(tmp_path / "sprite.png")
    shot = Image.new("RGB", (200, 100), (255, 255, 255))  # a product shot on white
    shot.paste(RED, (50, 40, 150, 60))
    shot.save(tmp_path / "shot.png")
    for name in ["sprite.png", "shot.png"]:
        padded, trimmed = (decode(tmp_path / name, resize=r) for r in ["pad", "trim_pad"])
        red_padded, red_trimmed = (np.argwhere(np.all(np.abs(a.astype(int) - RED) <= 12, axis=-1)) for a in (padded, trimmed))
        # pad: the bar keeps its 1/2 of the width; trim_pad: it spans all but the 4% margin
        assert np.ptp(red_padded[:, 1]) + 1 <= 17
        assert red_trimmed[:, 1].min() <= 2 and red_trimmed[:, 1].max() >= 29
        assert np.all(trimmed[0] == 255) and np.all(trimmed[-1] == 255)  # padded above and below


def test_trim_pad_of_an_image_without_content_is_pad(tmp_path):
    make_image(tmp_path / "white.png", (255, 255, 255), size=40)
    bands([RED, BLUE], size=(64, 40)).save(tmp_path / "full.png")
    for name in ["white.png", "full.png"]:
        assert np.array_equal(decode(tmp_path / name, resize="trim_pad"), decode(tmp_path / name, resize="pad"))


@pytest.mark.parametrize("mode", ["LA", "P", "L", "RGBA"])
def test_trim_pad_accepts_every_mode(tmp_path, mode):
    im = Image.new("RGBA", (80, 60), (0, 0, 0, 0))
    im.paste((30, 30, 30, 255), (20, 20, 60, 40))
    if mode == "P":
        im = im.convert("RGB").quantize(4)
    elif mode != "RGBA":
        im = im.convert(mode)
    im.save(tmp_path / "x.png")
    arr = decode(tmp_path / "x.png", resize="trim_pad")
    assert arr[16, 16].max() < 100  # the dark box is centred and fills the width


def test_content_box_of_a_large_image_is_found_on_a_reduced_copy():
    im = Image.new("RGB", (3000, 2000), (255, 255, 255))
    im.paste((0, 0, 255), (1000, 500, 1500, 700))
    left, top, right, bottom = data.content_box(im)
    # margin 4% (20 px, 8 px), give or take the reduction factor (3 px)
    assert abs(left - 980) <= 3 and abs(right - 1520) <= 3 and abs(top - 492) <= 3 and abs(bottom - 708) <= 3
    assert data.model_box(im, "stretch") == (0, 0, 3000, 2000)
    assert data.model_box(im, "trim_pad") == (left, top, right, bottom)


def test_pad_window():
    assert data.pad_window((96, 32), 32) == (0, 10, 32, 11)
    assert data.pad_window((10, 40), 32) == (12, 0, 8, 32)
    assert data.pad_window((50, 50), 32) == (0, 0, 32, 32)


def test_source_box():
    assert data.source_box((100, 40), "stretch") == (0, 0, 100, 40)
    assert data.source_box((100, 40), "center_crop") == (30, 0, 70, 40)
    assert data.source_box((40, 101), "center_crop") == (0, 30, 40, 70)


@pytest.mark.parametrize("resize", ["stretch", "center_crop"])
def test_large_jpeg_uses_the_draft_path_and_returns_the_right_size(tmp_path, monkeypatch, resize):
    from PIL import JpegImagePlugin

    bands([RED, BLUE], size=(1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    bands([RED, BLUE], size=(64, 48)).save(tmp_path / "small.jpg", quality=90)
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: calls.append(size) or original(self, mode, size))

    arr = decode(tmp_path / "big.jpg", 32, resize=resize)
    assert calls == [(64, 64)]
    assert close(arr[16, 2], RED, 20) and close(arr[16, 29], BLUE, 20)
    # the reduced decode gives the same picture as a full decode, within JPEG noise
    full = np.asarray(ImageOps.fit(Image.open(tmp_path / "big.jpg").convert("RGB"), (32, 32)) if resize == "center_crop"
                      else Image.open(tmp_path / "big.jpg").convert("RGB").resize((32, 32), Image.BILINEAR), dtype=int)
    assert np.abs(arr.astype(int) - full).mean() < 6

    calls.clear()
    decode(tmp_path / "small.jpg", 32, resize=resize)
    assert calls == []  # small JPEGs are decoded at full size


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_fifo_or_device_under_an_image_name_stops_the_scan_naming_it(tmp_path, kind):
    """Reading one would block forever (a FIFO) or never end (/dev/zero)."""
    import os

    root = make_dataset(tmp_path / "data", per_class=4)
    odd = root / "red" / "odd.png"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"odd.png is not a regular file .* remove it from data.root"):
        do_scan(root)

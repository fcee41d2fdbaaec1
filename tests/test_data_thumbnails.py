"""Thumbnails: made by extraction from the image it decoded anyway, read by the pages without decoding again."""

from __future__ import annotations

import os

import pytest

from conftest import COLORS, make_dataset, make_image, write_config
from vggtl import config, extract
from vggtl.data import DecodeSettings, thumbnails


def test_extraction_leaves_a_thumbnail_of_every_image_so_pages_never_decode(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", per_class=4)
    cfg = config.load(write_config(tmp_path / "c.yaml", root, tmp_path))
    result = extract.run(cfg, progress=False)
    decode = cfg.spec.decode
    assert all(thumbnails.cache_path(f.sha256, decode).is_file() for f in result.dataset.files)

    def no_decoding(self, path):
        raise AssertionError(f"decoded {path} a second time")

    monkeypatch.setattr(DecodeSettings, "decode", no_decoding)
    jpeg = thumbnails.thumbnail(result.dataset.files[0].path, decode)
    assert jpeg[:2] == b"\xff\xd8"


def test_an_edited_file_or_other_settings_get_a_new_thumbnail(tmp_path):
    path = make_image(tmp_path / "a.png", COLORS["red"], size=40)
    decode = DecodeSettings(32)
    first = thumbnails.thumbnail(path, decode)
    assert thumbnails.cache_path("x" * 64, decode) != thumbnails.cache_path("x" * 64, DecodeSettings(32, resize="pad"))
    make_image(path, COLORS["blue"], size=40)  # edited in place
    assert thumbnails.thumbnail(path, decode) != first


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory would be")
    monkeypatch.setenv("VGGTL_CACHE_DIR", str(blocked))
    path = make_image(tmp_path / "a.png", COLORS["green"])
    assert thumbnails.thumbnail(path, DecodeSettings(32))[:2] == b"\xff\xd8"
    if os.name == "posix":
        assert blocked.is_file()


def test_an_undecodable_file_raises_for_the_page_to_list(tmp_path):
    from vggtl.data import UndecodableImage

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UndecodableImage):
        thumbnails.thumbnail(bad, DecodeSettings(32))

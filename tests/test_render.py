"""Meme rendering, checked by measuring pixels of a real photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from gateway.render import TextBox, default_layout, draw_caption, render_meme, split_top_bottom

LONG = " ".join(["this caption just keeps going and going"] * 9)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(data.chelsea())


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, int) - np.asarray(b.convert("RGB"), int)).max(axis=-1) > 0


def test_top_and_bottom_text_is_white_with_black_outline_and_the_middle_is_untouched(photo: Image.Image) -> None:
    meme = draw_caption(photo, ["top text", "bottom text"])
    assert meme.size == photo.size and meme.mode == "RGB"
    diff = changed(meme, photo)
    h = photo.height
    pixels = np.asarray(meme)
    for band in (slice(0, h // 4), slice(h * 3 // 4, h)):
        assert diff[band].mean() > 0.02
        region = pixels[band][diff[band]]
        assert (region.min(axis=1) > 230).mean() > 0.1, "white fill"
        assert (region.max(axis=1) < 30).mean() > 0.1, "black outline"
    assert not diff[h * 3 // 8 : h * 5 // 8].any()


def test_a_single_caption_is_split_onto_top_and_bottom(photo: Image.Image) -> None:
    assert split_top_bottom("when the cat finally gets it") == ["when the cat", "finally gets it"]
    diff = changed(draw_caption(photo, ["when the cat finally gets it"]), photo)
    h = photo.height
    assert diff[: h // 4].any() and diff[h * 3 // 4 :].any()


@pytest.mark.parametrize("count", range(1, 7))
@pytest.mark.parametrize("text", ["short", LONG, "supercalifragilisticexpialidociouslylongwordwithoutanyspaces" * 2])
def test_text_stays_inside_its_boxes(photo: Image.Image, count: int, text: str) -> None:
    layout = default_layout(count)
    meme = draw_caption(photo, [text] * count, layout)
    inside = np.zeros((photo.height, photo.width), bool)
    for box in layout:
        left, top, right, bottom = box.rectangle(photo.width, photo.height)
        inside[top:bottom, left:right] = True
    diff = changed(meme, photo)
    assert diff.any()
    assert not (diff & ~inside).any()


def test_template_layout_boxes_are_respected(photo: Image.Image) -> None:
    box = TextBox.from_layout({"anchor_x": 0.5, "anchor_y": 0.4, "scale_x": 0.4, "scale_y": 0.2, "style": "upper"})
    diff = changed(draw_caption(photo, [LONG], [box]), photo)
    left, top, right, bottom = box.rectangle(photo.width, photo.height)
    assert diff[top:bottom, left:right].any()
    diff[top:bottom, left:right] = False
    assert not diff.any()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_output_formats_decode(photo: Image.Image, fmt: str) -> None:
    decoded = Image.open(io.BytesIO(render_meme(photo, ["hello", "world"], format=fmt)))
    assert decoded.format == fmt and decoded.size == photo.size


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_any_image_mode_renders(photo: Image.Image, mode: str) -> None:
    meme = draw_caption(photo.convert(mode), ["hello", "world"])
    assert meme.mode == "RGB" and meme.size == photo.size


def test_empty_caption_leaves_the_image_unchanged(photo: Image.Image) -> None:
    assert not changed(draw_caption(photo, []), photo).any()
    assert not changed(draw_caption(photo, ["", "  "]), photo).any()


def test_glyphs_the_meme_font_lacks_come_from_the_fallback_font(photo: Image.Image) -> None:
    missing = "\U0010fffd \U0010fffd \U0010fffd"  # no font has these: drawn as .notdef boxes
    checks = draw_caption(photo, ["\u2713 \u2713 \u2713"])
    assert changed(checks, photo)[: photo.height // 4].mean() > 0.01
    assert changed(checks, draw_caption(photo, [missing])).any(), "check marks drawn as glyphs, not boxes"

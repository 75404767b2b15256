"""Meme rendering, checked by measuring the pixels of a real photo (skimage's chelsea, a tabby cat)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

from gateway import render
from gateway.render import FontMissingError, TextBox, default_layout, draw_caption, render_meme, split_top_bottom

LONG_CAPTION = " ".join(["when the cat finally realises the red dot was never real at all"] * 5)
LONG_WORD = "supercalifragilisticexpialidociouslylongwordwithoutanyspaces" * 2


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(data.chelsea())


def changed(meme: Image.Image, original: Image.Image) -> np.ndarray:
    """Per pixel: does the meme differ from the original at all."""
    return (np.asarray(meme.convert("RGB")) != np.asarray(original.convert("RGB"))).any(axis=-1)


def near_white(pixels: np.ndarray) -> np.ndarray:
    return pixels.min(axis=-1) >= 235


def near_black(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=-1) <= 25


def inside(layout: list[TextBox], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), bool)
    for box in layout:
        left, top, right, bottom = box.rectangle(*size)
        mask[top:bottom, left:right] = True
    return mask


def text_lines(rows_changed: np.ndarray) -> int:
    """How many separate bands of rows hold text."""
    return int(np.sum(rows_changed[1:] & ~rows_changed[:-1]) + rows_changed[0])


def test_output_is_a_new_rgb_image_of_the_input_size(photo: Image.Image) -> None:
    meme = draw_caption(photo, ["top text", "bottom text"])
    assert meme.size == photo.size
    assert meme.mode == "RGB"
    assert meme is not photo
    assert not changed(photo, Image.fromarray(data.chelsea())).any(), "the input image was modified"


def test_two_boxes_draw_white_text_with_black_outline_in_the_top_and_bottom_bands(photo: Image.Image) -> None:
    meme = draw_caption(photo, ["when the human says", "it's bath time"])
    diff, pixels, h = changed(meme, photo), np.asarray(meme), photo.height
    original_pixels = np.asarray(photo)
    for band in (slice(0, h // 4), slice(h * 3 // 4, h)):
        assert diff[band].mean() > 0.03
        assert near_white(pixels[band][diff[band]]).sum() > 500, "white fill"
        assert near_black(pixels[band][diff[band]]).sum() > 300, "black outline"
        # The photo itself has hardly any such pixels there, so they come from the text.
        assert near_white(original_pixels[band]).sum() + near_black(original_pixels[band]).sum() < 100


def test_top_and_bottom_text_leaves_the_middle_of_the_image_untouched(photo: Image.Image) -> None:
    diff = changed(draw_caption(photo, ["when the human says", "it's bath time"]), photo)
    h = photo.height
    assert not diff[int(h * 0.3) : int(h * 0.7)].any()


@pytest.mark.parametrize("count", range(1, 7))
@pytest.mark.parametrize("text", ["cat", LONG_CAPTION, LONG_WORD], ids=["short", "60-words", "long-word"])
def test_every_changed_pixel_lies_inside_the_boxes(photo: Image.Image, count: int, text: str) -> None:
    assert len(LONG_CAPTION.split()) >= 60
    layout = default_layout(count)
    diff = changed(draw_caption(photo, [text] * count, layout), photo)
    box_mask = inside(layout, photo.size)
    for box in layout:
        left, top, right, bottom = box.rectangle(*photo.size)
        assert diff[top:bottom, left:right].any(), f"nothing drawn in {box}"
    assert not (diff & ~box_mask).any(), f"{int((diff & ~box_mask).sum())} pixels drawn outside the boxes"


def test_template_boxes_from_templates_json_entries_are_respected(photo: Image.Image) -> None:
    entry = {"anchor_x": 0.5, "anchor_y": 0.4, "scale_x": 0.4, "scale_y": 0.2, "align": "", "style": "upper"}
    box = TextBox.from_dict(entry)
    assert box == TextBox(0.5, 0.4, 0.4, 0.2)
    diff = changed(draw_caption(photo, [LONG_CAPTION], [box]), photo)
    assert diff.any()
    assert not (diff & ~inside([box], photo.size)).any()


def test_a_long_caption_is_wrapped_onto_several_lines(photo: Image.Image) -> None:
    box = TextBox(0.05, 0.05, 0.9, 0.5)
    diff = changed(draw_caption(photo, [LONG_CAPTION], [box]), photo)
    assert text_lines(diff.any(axis=1)) >= 4


def test_a_word_too_long_for_its_box_is_shrunk_before_it_is_broken(photo: Image.Image) -> None:
    wide, narrow = TextBox(0.0, 0.0, 1.0, 0.3), TextBox(0.4, 0.3, 0.12, 0.4)
    word = "unbelievable"
    wide_diff = changed(draw_caption(photo, [word], [wide]), photo)
    assert text_lines(wide_diff.any(axis=1)) == 1
    # In a box too narrow for it even at the smallest size, the word is broken over several lines.
    narrow_diff = changed(draw_caption(photo, [word * 3], [narrow]), photo)
    assert text_lines(narrow_diff.any(axis=1)) >= 2
    assert not (narrow_diff & ~inside([narrow], photo.size)).any()


def test_a_single_caption_is_split_onto_top_and_bottom(photo: Image.Image) -> None:
    assert split_top_bottom("when the cat finally gets it") == ["when the cat", "finally gets it"]
    assert split_top_bottom("  meow  ") == ["meow"]
    diff = changed(draw_caption(photo, ["when the cat finally gets it"]), photo)
    h = photo.height
    assert diff[: h // 4].mean() > 0.03
    assert diff[h * 3 // 4 :].mean() > 0.03
    assert not diff[int(h * 0.3) : int(h * 0.7)].any()


def test_a_single_word_caption_stays_on_top(photo: Image.Image) -> None:
    diff = changed(draw_caption(photo, ["meow"]), photo)
    h = photo.height
    assert diff[: h // 4].any()
    assert not diff[h // 3 :].any()


def test_an_empty_top_box_keeps_the_bottom_text_at_the_bottom(photo: Image.Image) -> None:
    diff = changed(draw_caption(photo, ["", "bottom text"]), photo)
    h = photo.height
    assert not diff[: h // 2].any()
    assert diff[h * 3 // 4 :].any()


@pytest.mark.parametrize("align", ["left", "right"])
def test_left_and_right_alignment_put_the_text_against_that_edge(photo: Image.Image, align: str) -> None:
    box = TextBox(0.1, 0.1, 0.8, 0.2, align=align)
    left, _, right, _ = box.rectangle(*photo.size)
    columns = np.flatnonzero(changed(draw_caption(photo, ["meow"], [box]), photo).any(axis=0))
    assert columns.size
    if align == "left":
        assert columns.min() - left <= 3 and right - columns.max() > 100
    else:
        assert right - columns.max() <= 4 and columns.min() - left > 100


def test_a_turned_box_keeps_its_text_inside_the_turned_box(photo: Image.Image) -> None:
    box = TextBox(0.2, 0.3, 0.5, 0.2, angle=20)
    diff = changed(draw_caption(photo, [LONG_CAPTION], [box]), photo)
    left, top, right, bottom = box.rectangle(*photo.size)
    w, h = right - left, bottom - top
    cos, sin = math.cos(math.radians(box.angle)), math.sin(math.radians(box.angle))
    corners = [(x * cos + y * sin, -x * sin + y * cos) for x in (-w / 2, w / 2) for y in (-h / 2, h / 2)]
    x0, y0 = min(x for x, _ in corners), min(y for _, y in corners)
    polygon = [(left + x - x0, top + y - y0) for x, y in (corners[0], corners[1], corners[3], corners[2])]
    turned = Image.new("L", photo.size)
    ImageDraw.Draw(turned).polygon(polygon, fill=255)
    allowed = np.asarray(turned.filter(ImageFilter.MaxFilter(5))) > 0  # resampling blurs by a pixel or two
    assert diff.sum() > 500
    assert not (diff & ~allowed).any()
    assert (diff & ~inside([box], photo.size)).any(), "the text is not turned"


def test_dark_text_is_drawn_without_an_outline(photo: Image.Image) -> None:
    box = TextBox(0.0, 0.0, 1.0, 0.25, color="navy")
    meme = draw_caption(photo, ["dark text"], [box])
    pixels = np.asarray(meme)[changed(meme, photo)].astype(int)
    navy = (np.abs(pixels - (0, 0, 128)) <= 10).all(axis=-1)
    assert navy.sum() > 300, "navy fill"
    assert near_black(pixels).sum() < 20, "an outline was drawn"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_outputs_decode(photo: Image.Image, fmt: str) -> None:
    encoded = render_meme(photo, ["hello", "world"], format=fmt.lower())
    decoded = Image.open(io.BytesIO(encoded))
    decoded.load()
    assert decoded.format == fmt
    assert decoded.size == photo.size
    expected = np.asarray(draw_caption(photo, ["hello", "world"]), float)
    error = np.abs(np.asarray(decoded.convert("RGB"), float) - expected).mean()
    assert error == 0 if fmt == "PNG" else error < 6


def test_unknown_formats_and_qualities_are_refused(photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="GIF"):
        render_meme(photo, ["hi"], format="GIF")
    with pytest.raises(ValueError, match="quality"):
        render_meme(photo, ["hi"], format="JPEG", quality=0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1"])
def test_any_image_mode_is_drawn_on_as_rgb(photo: Image.Image, mode: str) -> None:
    source = photo.convert(mode)
    meme = draw_caption(source, ["hello", "world"])
    assert meme.mode == "RGB" and meme.size == photo.size
    diff = changed(meme, source)
    pixels = np.asarray(meme)[diff]
    assert near_white(pixels).any() and near_black(pixels).any()
    assert not diff[int(photo.height * 0.3) : int(photo.height * 0.7)].any()


def test_a_16_bit_grayscale_photo_keeps_its_tones(photo: Image.Image) -> None:
    gray = photo.convert("L")
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    unchanged = draw_caption(sixteen, [])
    assert np.abs(np.asarray(unchanged, int) - np.asarray(gray.convert("RGB"), int)).max() <= 1
    assert changed(draw_caption(sixteen, ["top", "bottom"]), unchanged).any()


def test_transparent_pixels_become_white(photo: Image.Image) -> None:
    rgba = photo.convert("RGBA")
    alpha = np.full((photo.height, photo.width), 255, np.uint8)
    alpha[:, : photo.width // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    result = np.asarray(draw_caption(rgba, []))
    assert (result[:, : photo.width // 2] == 255).all()
    assert (result[:, photo.width // 2 :] == np.asarray(photo)[:, photo.width // 2 :]).all()


@pytest.mark.parametrize("boxes", [[], [""], ["", "   "]], ids=["no-boxes", "empty", "blank"])
def test_an_empty_caption_returns_the_image_unchanged(photo: Image.Image, boxes: list[str]) -> None:
    assert not changed(draw_caption(photo, boxes), photo).any()
    assert not changed(draw_caption(photo, boxes, default_layout(2)), photo).any()


def test_lowercase_is_kept_when_asked(photo: Image.Image) -> None:
    upper = draw_caption(photo, ["meow meow"], [TextBox()])
    lower = draw_caption(photo, ["meow meow"], [TextBox()], uppercase=False)
    assert changed(upper, lower).any()
    assert not changed(upper, draw_caption(photo, ["MEOW MEOW"], [TextBox()], uppercase=False)).any()


def test_more_texts_than_boxes_is_refused(photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="3 texts"):
        draw_caption(photo, ["a", "b", "c"], default_layout(2))


@pytest.mark.parametrize("count", range(1, 7))
def test_default_layout_spreads_full_width_bands_from_top_to_bottom(count: int) -> None:
    layout = default_layout(count)
    assert len(layout) == count
    assert layout[0].anchor_y < 0.05
    if count > 1:
        assert layout[-1].anchor_y + layout[-1].scale_y > 0.95
    for box in layout:
        assert 0.9 <= box.scale_x <= 1 and 0 <= box.anchor_x and box.anchor_x + box.scale_x <= 1
        assert 0.1 <= box.scale_y <= 0.26
    for upper, lower in zip(layout, layout[1:], strict=False):
        assert upper.anchor_y + upper.scale_y <= lower.anchor_y + 1e-9


def test_text_box_defaults_and_validation() -> None:
    assert TextBox.from_dict({}) == TextBox()
    assert TextBox() == TextBox(0.0, 0.0, 1.0, 0.25, "center", "white", 0.0)
    with pytest.raises(ValueError, match="align"):
        TextBox(align="middle")
    with pytest.raises(ValueError):
        TextBox(color="no-such-colour")


def test_glyphs_the_meme_font_lacks_are_drawn_with_the_fallback_font(photo: Image.Image) -> None:
    if render._fallback_font(render.FALLBACK_FONT_NAMES) is None:
        pytest.skip("no DejaVu Sans Bold on this machine (Debian: fonts-dejavu-core)")
    box = [TextBox()]
    checks = draw_caption(photo, ["\u2713\u2713\u2713"], box)
    missing = draw_caption(photo, ["\U0010fffd\U0010fffd\U0010fffd"], box)  # no font has it: .notdef boxes
    assert changed(checks, photo).any()
    assert changed(checks, missing).any(), "check marks drawn as missing-glyph boxes"


def test_without_a_fallback_font_text_still_renders(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "FALLBACK_FONT_NAMES", ("NoSuchFont-Bold.ttf",))
    assert changed(draw_caption(photo, ["\u041f\u0440\u0438\u0432\u0435\u0442 \u2713 cat"]), photo).any()


def test_a_missing_meme_font_names_the_missing_file(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setattr(render, "FONT_FILE", tmp_path / "Anton-Regular.ttf")
    with pytest.raises(FontMissingError, match=str(tmp_path / "Anton-Regular.ttf")):
        draw_caption(photo, ["meow"])


def test_the_shipped_font_comes_with_its_licence() -> None:
    assert render.FONT_FILE.is_file()
    licence = (render.FONT_FILE.parent / "OFL.txt").read_text()
    assert "SIL Open Font License" in licence and "Anton Project Authors" in licence

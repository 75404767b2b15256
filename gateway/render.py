"""Draw a caption onto an image the way memes look.

Bold condensed text (Anton, shipped in gateway/fonts/) in the box's colour, white by default, with a black
outline; each box's text is wrapped onto as many lines as fit, shrunk until it fits inside its box, and
never drawn outside it. Pure Pillow: the only files read are fonts.
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageColor, ImageDraw, ImageFont

__all__ = [
    "FONT_FILE",
    "FALLBACK_FONT_NAMES",
    "FontMissingError",
    "TextBox",
    "default_layout",
    "draw_caption",
    "render_meme",
    "split_top_bottom",
]

FONT_FILE = Path(__file__).with_name("fonts") / "Anton-Regular.ttf"
FALLBACK_FONT_NAMES = ("DejaVuSansCondensed-Bold.ttf", "DejaVuSans-Bold.ttf")
"""Looked up at run time in the system's font folders, for the glyphs Anton lacks (Cyrillic, Greek,
symbols); without one such text is drawn with Anton's missing-glyph box."""

ALIGNMENTS = ("center", "left", "right")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "JPG": "JPEG", "WEBP": "WEBP"}

MIN_FONT_SIZE = 8
MAX_FONT_FRACTION = 0.125
"""Largest font size as a fraction of the image height: a short caption stays meme-sized, not poster-sized."""
LINE_PITCH = 1.12
"""Baseline to baseline, in font sizes."""
STROKE_FRACTION = 1 / 14
PADDING = 1
"""Pixels kept free inside each box, so anti-aliased edges are not clipped."""
DARK_LUMA = 100
"""Text darker than this (0-255) gets no outline, as in memegen: black text sits on light panels."""

_MARGIN = 0.02
_BAND = 0.25
_UNASSIGNED = "\U0010fffd"


class FontMissingError(FileNotFoundError):
    """The meme font that ships with the package is not where it should be."""


@dataclass(frozen=True)
class TextBox:
    """A text box as fractions of the image (top-left corner and size), as in templates.json's `text_boxes`.

    `angle` turns the box counter-clockwise, in degrees; as in memegen, where the layouts come from, the
    turned box is placed with the top-left corner of its bounding box at the anchor. The text stays
    inside the turned box.
    """

    anchor_x: float = 0.0
    anchor_y: float = 0.0
    scale_x: float = 1.0
    scale_y: float = _BAND
    align: str = "center"
    color: str = "white"
    angle: float = 0.0

    def __post_init__(self) -> None:
        for name in ("anchor_x", "anchor_y", "scale_x", "scale_y", "angle"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"TextBox.{name} must be a finite number, not {getattr(self, name)!r}")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"TextBox.align must be one of {ALIGNMENTS}, not {self.align!r}")
        ImageColor.getrgb(self.color)  # raises ValueError for a colour Pillow does not know

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> TextBox:
        """A box from a templates.json `text_boxes` entry; missing, null or empty fields take the defaults
        and fields TextBox does not have (`style`) are ignored."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in entry.items() if key in known and value not in (None, "")})

    def rectangle(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The unturned box in pixels of a width × height image, clipped to it: left, top, right, bottom
        (right and bottom exclusive)."""
        left = min(max(round(self.anchor_x * width), 0), width)
        top = min(max(round(self.anchor_y * height), 0), height)
        right = min(max(round((self.anchor_x + self.scale_x) * width), left), width)
        bottom = min(max(round((self.anchor_y + self.scale_y) * height), top), height)
        return left, top, right, bottom


def default_layout(num_boxes: int) -> list[TextBox]:
    """Full-width bands: one box at the top; two at the top and bottom; more spread evenly between."""
    if num_boxes < 0:
        raise ValueError(f"num_boxes must be 0 or more, not {num_boxes}")
    if num_boxes == 0:
        return []
    height = min(_BAND, (1 - 2 * _MARGIN) / num_boxes)
    step = (1 - 2 * _MARGIN - height) / max(num_boxes - 1, 1)
    return [TextBox(_MARGIN, _MARGIN + i * step, 1 - 2 * _MARGIN, height) for i in range(num_boxes)]


def split_top_bottom(text: str) -> list[str]:
    """One caption as top and bottom text, cut at the word boundary nearest the middle of the text.

    Fewer than two words stay one box.
    """
    words = text.split()
    if len(words) < 2:
        return [" ".join(words)]
    middle = len(" ".join(words)) / 2
    ends = [len(" ".join(words[:cut])) for cut in range(1, len(words))]
    cut = 1 + min(range(len(ends)), key=lambda i: abs(ends[i] - middle))
    return [" ".join(words[:cut]), " ".join(words[cut:])]


def draw_caption(
    image: Image.Image, boxes: Sequence[str], layout: Sequence[TextBox] | None = None, uppercase: bool = True
) -> Image.Image:
    """A new RGB image of the same size as `image` with each text of `boxes` drawn inside its box.

    Any image mode is accepted: 16-bit and float images are scaled to 8 bits and transparency is laid
    on white. Empty texts are skipped. Without a layout, `default_layout(len(boxes))` is used, and a
    single text of two or more words is first split at the word boundary nearest its middle into top
    and bottom text, the classic meme (see `split_top_bottom`). More texts than layout boxes is an error.
    """
    texts = [text.strip() for text in boxes]
    if layout is None:
        if len(texts) == 1:
            texts = split_top_bottom(texts[0])
        layout = default_layout(len(texts))
    if len(texts) > len(layout):
        raise ValueError(f"{len(texts)} texts for a layout of {len(layout)} boxes")
    canvas = _to_rgb(image)
    fonts = _Fonts(_primary_font(), _fallback_font(FALLBACK_FONT_NAMES))
    for text, box in zip(texts, layout, strict=False):
        if text:
            _draw_box(canvas, text.upper() if uppercase else text, box, fonts)
    return canvas


def render_meme(
    image: Image.Image,
    boxes: Sequence[str],
    layout: Sequence[TextBox] | None = None,
    *,
    uppercase: bool = True,
    format: str = "PNG",
    quality: int = 90,
) -> bytes:
    """The meme (see `draw_caption`) encoded as PNG, JPEG or WEBP; `quality` (1-100) is for JPEG and WEBP."""
    encoding = FORMATS.get(format.upper())
    if encoding is None:
        raise ValueError(f"format must be PNG, JPEG or WEBP, not {format!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1 to 100, not {quality}")
    meme = draw_caption(image, boxes, layout, uppercase)
    buffer = io.BytesIO()
    meme.save(buffer, format=encoding, **({} if encoding == "PNG" else {"quality": quality}))
    return buffer.getvalue()


# Images


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's own conversion clips at 255, which turns a 16-bit photo white.
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = image.getextrema()
        low, high = (0.0, 255.0) if low >= 0 and high <= 255 else (float(low), float(high))
    scale = 255 / max(high - low, 1e-9)
    return image.convert("F").point(lambda value: value * scale - low * scale).convert("L")


# Fonts


def _primary_font() -> str:
    if not FONT_FILE.is_file():
        raise FontMissingError(f"The meme font is missing: {FONT_FILE} (it ships inside the gateway package)")
    return str(FONT_FILE)


@lru_cache(maxsize=8)
def _fallback_font(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return ImageFont.truetype(name, MIN_FONT_SIZE).path
        except OSError:
            continue
    return None


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=8192)
def _has_glyph(path: str, char: str) -> bool:
    # Pillow does not expose the character map: a missing glyph draws as .notdef, like an unassigned code point.
    font = _font(path, 48)
    mask, missing = font.getmask(char), font.getmask(_UNASSIGNED)
    return mask.size != missing.size or bytes(mask) != bytes(missing)


@lru_cache(maxsize=65536)
def _glyph_box(font: ImageFont.FreeTypeFont, char: str) -> tuple[float, float, float, float]:
    return font.getbbox(char, anchor="ls")


@lru_cache(maxsize=8)
def _covers_ascii(path: str) -> bool:
    return all(_has_glyph(path, chr(code)) for code in range(0x21, 0x7F))


def _rides_along(char: str) -> bool:
    """Spaces, combining marks and joiners stay in the font of the character before them."""
    return char.isspace() or unicodedata.category(char) in ("Mn", "Me", "Cf")


class _Run(NamedTuple):
    x: float
    font: ImageFont.FreeTypeFont
    text: str


@dataclass(frozen=True)
class _Fonts:
    primary: str
    fallback: str | None

    def path_for(self, char: str) -> str:
        if self.fallback and not _has_glyph(self.primary, char) and _has_glyph(self.fallback, char):
            return self.fallback
        return self.primary

    def runs(self, line: str, size: int) -> list[_Run]:
        """The line cut into pieces drawn with one font each, and where each starts."""
        if line.isascii() and _covers_ascii(self.primary):
            return [_Run(0.0, _font(self.primary, size), line)]
        pieces: list[tuple[str, str]] = []
        for char in line:
            path = pieces[-1][0] if pieces and _rides_along(char) else self.path_for(char)
            if pieces and pieces[-1][0] == path:
                pieces[-1] = (path, pieces[-1][1] + char)
            else:
                pieces.append((path, char))
        runs, x = [], 0.0
        for path, text in pieces:
            font = _font(path, size)
            runs.append(_Run(x, font, text))
            x += font.getlength(text)
        return runs

    def ink(self, line: str, size: int) -> tuple[float, float, float, float]:
        """Where the line's pixels, outline included, fall relative to the start of its baseline.

        Taken from advance widths and each character's own box: Pillow's getbbox of a whole line renders
        every glyph, which made fitting a long caption take seconds.
        """
        runs = self.runs(line, size)
        boxes = [_glyph_box(run.font, char) for run in runs for char in set(run.text) if not char.isspace()]
        first, last = runs[0], runs[-1]
        left = first.x + _glyph_box(first.font, first.text[0])[0]
        last_x = last.x + last.font.getlength(last.text) - last.font.getlength(last.text[-1])
        right = last_x + _glyph_box(last.font, last.text[-1])[2]
        stroke = _stroke(size)
        top = min((box[1] for box in boxes), default=0)
        bottom = max((box[3] for box in boxes), default=0)
        return left - stroke, top - stroke, right + stroke, bottom + stroke

    def advance(self, text: str, size: int) -> float:
        last = self.runs(text, size)[-1]
        return last.x + last.font.getlength(last.text)

    def width(self, line: str, size: int) -> float:
        left, _, right, _ = self.ink(line, size)
        return right - left


def _stroke(size: int) -> int:
    return max(1, round(size * STROKE_FRACTION))


# Fitting text into a box


class _Fit(NamedTuple):
    size: int
    lines: list[str]


def _break_word(word: str, size: int, width: float, fonts: _Fonts) -> list[str] | None:
    """The word cut into the longest pieces that fit; None when not even one character fits."""
    pieces = []
    while word:
        low, high = 1, len(word)
        while low < high:  # the longest prefix that fits
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fonts.width(word[:middle], size) <= width else (low, middle - 1)
        if fonts.width(word[:low], size) > width:
            return None
        pieces.append(word[:low])
        word = word[low:]
    return pieces


@lru_cache(maxsize=65536)
def _measure(fonts: _Fonts, word: str, size: int) -> tuple[float, float, float]:
    """A word's ink left and right (outline included) and its advance, all from its origin."""
    left, _, right, _ = fonts.ink(word, size)
    return left, right, fonts.advance(word, size)


def _wrap(words: Sequence[str], size: int, width: float, fonts: _Fonts, break_words: bool) -> list[str] | None:
    """Greedy word wrap; None when a word is wider than the box and may not (or cannot) be broken."""
    # Lines are measured word by word (kerning across a space is nil): measuring each longer line
    # afresh made long captions quadratic.
    space = fonts.advance(" ", size)
    lines: list[str] = []
    line_left = line_end = 0.0
    for word in words:
        pieces: list[str] | None = [word]
        if fonts.width(word, size) > width:
            pieces = _break_word(word, size, width, fonts) if break_words else None
            if pieces is None:
                return None
        for piece in pieces:
            left, right, advance = _measure(fonts, piece, size)
            if lines and line_end + space + right - line_left <= width:
                lines[-1] = f"{lines[-1]} {piece}"
                line_end += space + advance
            else:
                lines.append(piece)
                line_left, line_end = left, advance
    return lines


def _block(lines: Sequence[str], size: int, fonts: _Fonts) -> tuple[float, float]:
    """Top and bottom of the lines' pixels relative to the first baseline."""
    pitch = size * LINE_PITCH
    inks = [fonts.ink(line, size) for line in lines]
    return (
        min(i * pitch + ink[1] for i, ink in enumerate(inks)),
        max(i * pitch + ink[3] for i, ink in enumerate(inks)),
    )


def _fits(lines: Sequence[str] | None, size: int, height: float, fonts: _Fonts) -> bool:
    if not lines:
        return False
    top, bottom = _block(lines, size, fonts)
    return bottom - top <= height


def _largest(
    words: Sequence[str], width: float, height: float, max_size: int, fonts: _Fonts, break_words: bool
) -> _Fit | None:
    """Binary search for the largest font size whose wrapped lines fit width × height."""
    best = None
    low, high = MIN_FONT_SIZE, max_size
    while low <= high:
        size = (low + high) // 2
        lines = _wrap(words, size, width, fonts, break_words)
        if lines is not None and _fits(lines, size, height, fonts):
            best, low = _Fit(size, lines), size + 1
        else:
            high = size - 1
    return best


def _truncated(words: Sequence[str], width: float, height: float, fonts: _Fonts) -> _Fit | None:
    """Last resort: the smallest size, words broken, the lines that fit, and an ellipsis for the rest."""
    lines = _wrap(words, MIN_FONT_SIZE, width, fonts, break_words=True) or []
    kept = len(lines)
    while kept and not _fits(lines[:kept], MIN_FONT_SIZE, height, fonts):
        kept -= 1
    if not kept:
        return None
    last = lines[kept - 1]
    while last and fonts.width(f"{last}…", MIN_FONT_SIZE) > width:
        last = last[:-1]
    return _Fit(MIN_FONT_SIZE, [*lines[: kept - 1], f"{last.rstrip()}…"])


def _balanced(fit: _Fit, words: Sequence[str], width: float, height: float, fonts: _Fonts) -> list[str]:
    """The same lines re-wrapped to the narrowest width that needs no more of them, so that they come out
    about even instead of a full line over a lone word."""
    best = fit.lines
    low, high = 1, math.floor(width)
    while low <= high and len(fit.lines) > 1:
        middle = (low + high) // 2
        lines = _wrap(words, fit.size, middle, fonts, break_words=False)
        if lines is not None and len(lines) <= len(fit.lines) and _fits(lines, fit.size, height, fonts):
            best, high = lines, middle - 1
        else:
            low = middle + 1
    return best


def _fit(text: str, width: float, height: float, max_size: int, fonts: _Fonts) -> _Fit | None:
    """The text at the largest size that fits with whole words; words broken only when even the smallest
    size is too big for one of them, truncated when that does not fit either, None for a box too small
    for one line."""
    words = text.split()
    max_size = max(MIN_FONT_SIZE, min(max_size, math.floor(height)))
    whole = _largest(words, width, height, max_size, fonts, break_words=False)
    if whole is not None:
        return _Fit(whole.size, _balanced(whole, words, width, height, fonts))
    broken = _largest(words, width, height, max_size, fonts, break_words=True)
    return broken or _truncated(words, width, height, fonts)


# Drawing


def _vertical_place(top: int, bottom: int, image_height: int) -> str:
    """Boxes near the top hug their top edge and boxes near the bottom their bottom edge, like classic memes."""
    centre = (top + bottom) / 2 / image_height
    return "top" if centre < 0.4 else "bottom" if centre > 0.6 else "middle"


def _masks(fit: _Fit, size: tuple[int, int], align: str, place: str, fonts: _Fonts) -> tuple[Image.Image, Image.Image]:
    """Coverage masks of the outline and of the fill, each box-sized."""
    width, height = size[0] - 2 * PADDING, size[1] - 2 * PADDING
    top, bottom = _block(fit.lines, fit.size, fonts)
    y0 = {"top": -top, "bottom": height - bottom, "middle": (height - (bottom - top)) / 2 - top}[place]
    outline, fill = Image.new("L", size), Image.new("L", size)
    outline_draw, fill_draw = ImageDraw.Draw(outline), ImageDraw.Draw(fill)
    for i, line in enumerate(fit.lines):
        left, _, right, _ = fonts.ink(line, fit.size)
        x0 = {"left": -left, "right": width - right, "center": (width - (right - left)) / 2 - left}[align]
        y = PADDING + y0 + i * fit.size * LINE_PITCH
        for run in fonts.runs(line, fit.size):
            xy = (PADDING + x0 + run.x, y)
            outline_draw.text(xy, run.text, fill=255, font=run.font, anchor="ls", stroke_width=_stroke(fit.size))
            fill_draw.text(xy, run.text, fill=255, font=run.font, anchor="ls")
    return outline, fill


def _draw_box(canvas: Image.Image, text: str, box: TextBox, fonts: _Fonts) -> None:
    left, top, right, bottom = box.rectangle(canvas.width, canvas.height)
    size = (right - left, bottom - top)
    if min(size) <= 2 * PADDING:
        return
    max_size = max(MIN_FONT_SIZE, round(canvas.height * MAX_FONT_FRACTION))
    fit = _fit(text, size[0] - 2 * PADDING, size[1] - 2 * PADDING, max_size, fonts)
    if fit is None:
        return
    outline, fill = _masks(fit, size, box.align, _vertical_place(top, bottom, canvas.height), fonts)
    if box.angle % 360:
        outline, fill = (mask.rotate(box.angle, Image.Resampling.BICUBIC, expand=True) for mask in (outline, fill))
    region = (left, top, left + outline.width, top + outline.height)
    if ImageColor.getcolor(box.color, "L") >= DARK_LUMA:
        canvas.paste((0, 0, 0), region, outline)
    canvas.paste(ImageColor.getrgb(box.color)[:3], region, fill)

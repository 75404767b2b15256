"""Draw a caption on an image the way memes look: bold condensed white text with a black outline,
wrapped and shrunk until it fits its box. Pure Pillow; the only file it reads is the font.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_FILE = Path(__file__).parent / "fonts" / "BebasNeue-Bold.otf"
"""Bebas Neue Bold (SIL OFL 1.1, see fonts/OFL.txt)."""
FALLBACK_FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
)
"""For text Bebas Neue has no glyphs for (Cyrillic, Greek, symbols); used when installed."""

MIN_FONT_SIZE = 8
LINE_SPACING = 1.0
WORD_GAP = "  "
"""Bebas Neue's own space is too narrow for words in caps to read apart."""


class FontMissingError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class TextBox:
    """A text box as fractions of the image: top-left corner and size (the templates.json layout)."""

    anchor_x: float = 0.0
    anchor_y: float = 0.0
    scale_x: float = 1.0
    scale_y: float = 0.2
    align: str = "center"
    color: str = "white"
    angle: float = 0.0

    @classmethod
    def from_layout(cls, entry: dict) -> TextBox:
        known = {k: v for k, v in entry.items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)

    def rectangle(self, width: int, height: int) -> tuple[int, int, int, int]:
        left, top = round(self.anchor_x * width), round(self.anchor_y * height)
        return left, top, left + round(self.scale_x * width), top + round(self.scale_y * height)


def default_layout(num_boxes: int) -> list[TextBox]:
    """Top band, bottom band, and evenly spaced bands between them for more boxes."""
    margin, band = 0.02, 0.25
    if num_boxes <= 1:
        return [TextBox(margin, margin, 1 - 2 * margin, band)]
    height = min(band, (1 - 2 * margin) / num_boxes)
    step = (1 - 2 * margin - height) / (num_boxes - 1)
    return [TextBox(margin, margin + i * step, 1 - 2 * margin, height) for i in range(num_boxes)]


def split_top_bottom(text: str) -> list[str]:
    """One caption → top and bottom text, split at the word boundary nearest the middle."""
    words = text.split()
    if len(words) < 2:
        return [text]
    lengths = [len(" ".join(words[:i])) for i in range(1, len(words))]
    middle = len(text) / 2
    cut = 1 + min(range(len(lengths)), key=lambda i: abs(lengths[i] - middle))
    return [" ".join(words[:cut]), " ".join(words[cut:])]


@lru_cache(maxsize=64)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _primary_font_path() -> Path:
    if not FONT_FILE.is_file():
        raise FontMissingError(f"meme font missing: {FONT_FILE} (it ships with the gateway package)")
    return FONT_FILE


@lru_cache(maxsize=4096)
def _has_glyph(path: Path, char: str) -> bool:
    font = _font(path, 32)
    # A missing glyph renders as the font's .notdef box, the same as a surely unassigned code point.
    return bytes(font.getmask(char)) != bytes(font.getmask("\U0010fffd"))


def _font_path_for(text: str) -> Path:
    primary = _primary_font_path()
    if all(char.isspace() or _has_glyph(primary, char) for char in text):
        return primary
    return next((p for p in FALLBACK_FONT_FILES if p.is_file()), primary)


def _stroke(size: int) -> int:
    return max(1, round(size / 12))


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: float, stroke: int) -> list[str] | None:
    """Greedy word wrap; None when a single word is wider than the box at this size."""
    lines: list[str] = []
    for word in text.split():
        if font.getlength(word) + 2 * stroke > max_width:
            return None
        if lines and font.getlength(f"{lines[-1]}{WORD_GAP}{word}") + 2 * stroke <= max_width:
            lines[-1] = f"{lines[-1]}{WORD_GAP}{word}"
        else:
            lines.append(word)
    return lines


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return round((ascent + descent) * LINE_SPACING)


def _break_long_words(text: str, font: ImageFont.FreeTypeFont, max_width: float, stroke: int) -> str:
    pieces = []
    for word in text.split():
        while font.getlength(word) + 2 * stroke > max_width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) + 2 * stroke > max_width:
                cut -= 1
            pieces.append(word[:cut])
            word = word[cut:]
        pieces.append(word)
    return " ".join(pieces)


def _fit(text: str, path: Path, width: int, height: int) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font size whose wrapped lines fit width × height (binary search)."""
    best: tuple[ImageFont.FreeTypeFont, list[str]] | None = None
    low, high = MIN_FONT_SIZE, max(MIN_FONT_SIZE, height)
    while low <= high:
        size = (low + high) // 2
        font, stroke = _font(path, size), _stroke(size)
        lines = _wrap(text, font, width, stroke)
        if lines is not None and len(lines) * _line_height(font) + 2 * stroke <= height:
            best, low = (font, lines), size + 1
        else:
            high = size - 1
    if best is not None:
        return best
    # Even the smallest size does not fit: break words, and keep what fits in height.
    font, stroke = _font(path, MIN_FONT_SIZE), _stroke(MIN_FONT_SIZE)
    lines = _wrap(_break_long_words(text, font, width, stroke), font, width, stroke) or []
    max_lines = max(1, (height - 2 * stroke) // _line_height(font))
    return font, lines[:max_lines]


def _draw_box(layer: Image.Image, text: str, box: TextBox, rectangle: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = rectangle
    width, height = right - left, bottom - top
    if width < 4 or height < 4:
        return
    font, lines = _fit(text, _font_path_for(text), width, height)
    stroke = _stroke(font.size)
    line_height = _line_height(font)
    block = len(lines) * line_height
    # Boxes in the upper part hug their top edge, in the lower part their bottom edge.
    centre = (top + bottom) / 2 / layer.height
    if centre < 0.4:
        y = top + stroke
    elif centre > 0.6:
        y = bottom - stroke - block
    else:
        y = top + (height - block) // 2
    draw = ImageDraw.Draw(layer)
    for line in lines:
        line_width = font.getlength(line)
        if box.align == "left":
            x = left + stroke
        elif box.align == "right":
            x = right - stroke - line_width
        else:
            x = left + (width - line_width) / 2
        draw.text((x, y), line, font=font, fill=box.color, stroke_width=stroke, stroke_fill="black")
        y += line_height


def draw_caption(
    image: Image.Image, boxes: Sequence[str], layout: Sequence[TextBox] | None = None, uppercase: bool = True
) -> Image.Image:
    """A new RGB image of the same size with each text drawn inside its box.

    Without a layout, one caption of two or more words is split into top and bottom text (the classic
    meme), and more boxes are spread from top to bottom.
    """
    texts = [t.strip() for t in boxes]
    if layout is None:
        texts = [t for t in texts if t]
        if len(texts) == 1:
            texts = split_top_bottom(texts[0])
        layout = default_layout(len(texts))
    canvas = image.convert("RGB")
    for text, box in zip(texts, layout, strict=False):
        if not text:
            continue
        text = text.upper() if uppercase else text
        rectangle = box.rectangle(canvas.width, canvas.height)
        if box.angle:
            layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
            _draw_box(layer, text, box, rectangle)
            centre = ((rectangle[0] + rectangle[2]) / 2, (rectangle[1] + rectangle[3]) / 2)
            layer = layer.rotate(-box.angle, center=centre, resample=Image.Resampling.BICUBIC)
            canvas.paste(layer, (0, 0), layer)
        else:
            _draw_box(canvas, text, box, rectangle)
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
    """The meme encoded as PNG, JPEG or WEBP."""
    canvas = draw_caption(image, boxes, layout, uppercase)
    buffer = io.BytesIO()
    options = {"quality": quality} if format.upper() in ("JPEG", "WEBP") else {"optimize": False}
    canvas.save(buffer, format=format.upper(), **options)
    return buffer.getvalue()

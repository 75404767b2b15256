"""A corpus of hostile and awkward uploads, made on the fly (none is committed), for tests and `make soak`."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, PngImagePlugin

from tests.support import photo_jpeg

EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6
"""EXIF orientation 6: the stored pixels must be turned 90° clockwise to stand upright."""


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 30000) -> bytes:
    """A valid side×side 1-bit PNG of zeros: about 110 KB on disk, side² bytes (900 MB) once decoded by Pillow."""
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    rows_per_piece = 1000
    pieces = [compressor.compress(row * rows_per_piece) for _ in range(side // rows_per_piece)]
    pieces.append(compressor.compress(row * (side % rows_per_piece)))
    pieces.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(pieces))
        + _png_chunk(b"IEND", b"")
    )


def _save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    whole = photo_jpeg("chelsea")
    return whole[: len(whole) // 2]


def text_named_png() -> bytes:
    return b"just some text, not a PNG\n" * 10


def one_pixel_png() -> bytes:
    return _save(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


CMYK_RED = (0, 255, 255, 0)


def cmyk_jpeg() -> bytes:
    """64×48 pure red, stored as CMYK."""
    return _save(Image.new("CMYK", (64, 48), CMYK_RED), "JPEG", quality=95)


def sixteen_bit_png() -> bytes:
    """A 16-bit grey ramp, 0 to 65535 along x: Pillow's own `convert` would clip most of it to white."""
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    return _save(Image.fromarray(ramp), "PNG")


def animated_gif() -> bytes:
    """Two 40×30 frames: red, then blue."""
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))
    return _save(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """Stored 120 wide × 60 high, left half red, right half blue, with EXIF orientation 6: upright it is
    60 wide × 120 high, red on top."""
    stored = Image.new("RGB", (120, 60), (255, 0, 0))
    stored.paste((0, 0, 255), (60, 0, 120, 60))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes())


def transparent_png() -> bytes:
    """32×32, fully transparent black: laid on white, it must come out white (not black)."""
    return _save(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG")


def palette_png_with_transparency() -> bytes:
    """A palette image: left half transparent (palette index 0, black), right half green."""
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (16, 0, 32, 32))
    return _save(image, "PNG", transparency=0)


def svg() -> bytes:
    return b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>\n'


def tiff() -> bytes:
    return _save(Image.new("RGB", (8, 8), "white"), "TIFF")


def huge_text_chunk_png(text_bytes: int = 1536 * 1024) -> bytes:
    """An 8×8 PNG carrying `text_bytes` of tEXt metadata: under the upload limit, so it must decode."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * text_bytes)
    return _save(Image.new("RGB", (8, 8), (10, 120, 10)), "PNG", pnginfo=info)


def compressed_text_bomb_png() -> bytes:
    """An 8×8 PNG whose zTXt chunk is 60 KB but inflates to 64 MB: Pillow refuses it past MAX_TEXT_CHUNK."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * (64 * 1024 * 1024), zip=True)
    return _save(Image.new("RGB", (8, 8)), "PNG", pnginfo=info)


CORPUS: dict[str, tuple[Callable[[], bytes], int, str | None]] = {
    # name: (maker, status, error code)
    "truncated_jpeg": (truncated_jpeg, 400, "invalid_image"),
    "zero_bytes": (lambda: b"", 400, "empty_image"),
    "text_named_png": (text_named_png, 400, "invalid_image"),
    "png_bomb_30000x30000": (png_bomb, 413, "too_many_pixels"),
    "one_pixel": (one_pixel_png, 200, None),
    "cmyk_jpeg": (cmyk_jpeg, 200, None),
    "sixteen_bit_png": (sixteen_bit_png, 200, None),
    "animated_gif": (animated_gif, 200, None),
    "exif_rotated_jpeg": (exif_rotated_jpeg, 200, None),
    "transparent_png": (transparent_png, 200, None),
    "palette_png_with_transparency": (palette_png_with_transparency, 200, None),
    "svg": (svg, 415, "unsupported_image_format"),
    "tiff": (tiff, 415, "unsupported_image_format"),
    "huge_text_chunk_png": (huge_text_chunk_png, 200, None),
    "compressed_text_bomb_png": (compressed_text_bomb_png, 400, "invalid_image"),
}
"""Every upload's expected answer from POST /v1/memes."""

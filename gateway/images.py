"""Uploads: check that the bytes are an image, and prepare what the model and the renderer get.

Uploads are hostile until decoded. Only the parsers of the accepted formats ever see the bytes, the
pixel count is checked from the header before any pixel is decoded (a 30000×30000 PNG of zeros is
100 KB on disk and 900 MB in memory), and whatever a parser raises on a malformed file is a 4xx.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import ApiError

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
"""Pillow format names; animated GIF and WebP give their first frame."""
DEFAULT_MAX_PIXELS = 40_000_000
"""40 megapixels: any phone photo, and at most 160 MB as RGBA while it is converted."""

_OTHER_FORMATS = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def accepted_formats_text() -> str:
    return ", ".join(ACCEPTED_FORMATS)


def _unsupported(kind: str) -> ApiError:
    return ApiError(415, "unsupported_image_format", f"{kind} images are not accepted; send {accepted_formats_text()}")


def sniff_other_format(data: bytes) -> str | None:
    """The name of a well-known image format we do not accept, from its signature; None if unknown.

    Only signatures are read, so no parser of a refused format ever runs on the upload.
    """
    for signature, name in _OTHER_FORMATS:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return _HEIF_BRANDS[data[8:12]]
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg")) and b"<svg" in head):
        return "SVG"
    return None


def open_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an upload into an upright RGB image (first frame if animated), or raise a 4xx `ApiError`."""
    if not data:
        raise ApiError(400, "empty_image", "the uploaded image is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(max_pixels) from error
    except UnidentifiedImageError as error:
        other = sniff_other_format(data)
        if other is not None:
            raise _unsupported(other) from error
        raise ApiError(
            400, "invalid_image", f"the upload is not a readable image; send {accepted_formats_text()}"
        ) from error
    except Exception as error:  # a malformed header: whatever the parser raises, the file is unreadable
        raise _unreadable(error) from error
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels, width, height)
    if width == 0 or height == 0:
        raise ApiError(400, "invalid_image", "the image has no pixels")
    try:
        image.seek(0)
        image.load()
        return to_rgb(_upright(image))
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(max_pixels) from error
    except MemoryError as error:
        raise ApiError(413, "image_too_large", "the image is too large to decode") from error
    except Exception as error:  # truncated or corrupt pixel data
        raise _unreadable(error) from error


def _too_many_pixels(max_pixels: int, width: int | None = None, height: int | None = None) -> ApiError:
    size = f" ({width}×{height})" if width is not None else ""
    return ApiError(413, "too_many_pixels", f"the image has more than {max_pixels} pixels{size}")


def _unreadable(error: Exception) -> ApiError:
    logger.info("unreadable upload: %s", type(error).__name__)  # never the bytes, nor messages quoting them
    return ApiError(400, "invalid_image", f"the upload is not a readable image: {str(error)[:200]}")


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # broken EXIF must not cost the picture
        logger.info("ignored unreadable EXIF orientation: %s", type(error).__name__)
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled (not clipped, as Pillow's `convert` does), transparency laid on white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


@contextmanager
def pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Sets Pillow's own decompression-bomb limit (a process-wide global) while the app runs.

    `open_upload` checks `max_pixels` itself before decoding; Pillow's check, which raises only above
    twice its limit, is the second line, also for frames inside a file.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def model_input(image: Image.Image, max_side: int) -> bytes:
    """JPEG bytes, longest side at most `max_side`: what `encode` decodes in-graph.

    Scaling here bounds the bytes on the wire, and matches the 512-px template images the model was
    trained on.
    """
    scaled = image.copy()
    scaled.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    scaled.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()

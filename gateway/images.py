"""Uploads: check that the bytes are an image, and prepare what the model and the renderer get."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import ApiError

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}


def open_upload(data: bytes) -> Image.Image:
    """Decode an upload into an upright RGB image, or raise a 4xx `ApiError`."""
    if not data:
        raise ApiError(400, "empty_image", "the uploaded image is empty")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ACCEPTED_FORMATS:
            raise ApiError(
                415,
                "unsupported_image_format",
                f"{image.format} images are not accepted; send one of {', '.join(sorted(ACCEPTED_FORMATS))}",
            )
        image.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ApiError(400, "invalid_image", f"the upload is not a readable image: {error}") from error
    return ImageOps.exif_transpose(image).convert("RGB")


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

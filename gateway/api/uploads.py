"""Reading a meme request: multipart form or JSON, the image as a file or base64."""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from gateway.errors import ApiError
from gateway.model_router import MODEL_HEADER
from gateway.schemas import MemeJsonRequest, MemeOptions

MemeOptionsT = TypeVar("MemeOptionsT", bound=MemeOptions)


def invalid_request(error: ValidationError) -> ApiError:
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
    return ApiError(422, "invalid_request", details)


async def read_meme_request(request: Request, max_bytes: int) -> tuple[bytes | None, MemeJsonRequest]:
    """The uploaded bytes (None for an image_url or a template) and the options, from multipart or JSON.

    The body is already capped (gateway/limits.py); multipart files spill to disk past 1 MB.
    """
    content_type = request.headers.get("content-type", "").lower()
    data: bytes | None = None
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=64, max_part_size=64 * 1024)
        upload = form.get("image")
        fields: dict = {key: value for key, value in form.items() if key != "image" and isinstance(value, str)}
        if "text" in fields:
            fields["text"] = fields["text"].split("\n")
        try:
            options = MemeJsonRequest.model_validate(fields)
        except ValidationError as error:
            raise invalid_request(error) from error
        if isinstance(upload, UploadFile):
            data = await upload.read(max_bytes + 1)
        elif upload is not None:
            raise ApiError(422, "invalid_request", "'image' must be a file field")
    elif content_type.startswith("application/json"):
        try:
            options = MemeJsonRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise invalid_request(error) from error
        if options.image is not None:
            data = _decode_base64(options.image)
    else:
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with an 'image' file, or JSON with base64 'image'"
        )
    if data is not None and len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"the image exceeds {max_bytes} bytes")
    return data, options


def _decode_base64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:
        header, text = text.split(",", 1)
        if not header.endswith(";base64"):
            raise ApiError(422, "invalid_request", "image: a data: URL must be base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(422, "invalid_request", "image: not valid base64") from error


def with_model_header(options: MemeOptionsT, request: Request) -> MemeOptionsT:
    """The options, naming the model of the `X-Memefly-Model` header when the body names none."""
    named = request.headers.get(MODEL_HEADER, "").strip()
    if options.model or not named:
        return options
    return options.model_copy(update={"model": named})

"""POST /v1/memes: an image in, a meme (or its captions as JSON) out."""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from gateway.api.deps import SessionDep, SettingsDep
from gateway.backends import ModelUnavailableError
from gateway.captioner import CaptionRequest, CaptionResult
from gateway.errors import ApiError
from gateway.images import model_input, open_upload
from gateway.render import render_meme
from gateway.scheduler import DeadlineExceeded
from gateway.search import SamplingSettings, SearchSettings

router = APIRouter(tags=["memes"])

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class MemeOptions(BaseModel):
    n: int = Field(3, ge=1, le=16, description="How many captions to return (JSON); the image shows the best.")
    decoding: Literal["beam", "sample"] = Field("beam", description="Beam search, or sampling for variety.")
    beam_width: int | None = Field(None, ge=1, le=16)
    length_penalty: float | None = Field(None, ge=0, le=4)
    max_length: int | None = Field(None, ge=1, le=64)
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling only.")
    top_p: float = Field(0.9, gt=0, le=1, description="Sampling only: nucleus mass.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Makes sampling and noise reproducible.")
    noise: float = Field(0.0, ge=0, le=2, description="Gaussian noise on the image context, for variety.")
    prefix: str = Field(
        "",
        max_length=200,
        description="The caption's start, which the model completes; end it with a newline "
        "to close the top box so the model writes the bottom one.",
    )
    format: Literal["png", "jpeg", "webp"] = "png"
    uppercase: bool = True


class MemeJsonRequest(MemeOptions):
    image: str = Field(description="The image file's bytes, base64-encoded (JPEG, PNG, WebP, GIF or BMP).")


class CaptionOut(BaseModel):
    text: str
    boxes: list[str]
    score: float
    log_prob: float


class ModelOut(BaseModel):
    name: str
    version: int
    backend: str


class MemeResponse(BaseModel):
    captions: list[CaptionOut]
    model: ModelOut
    rpcs: int = Field(description="Calls made to the model tier for this meme.")
    width: int
    height: int


def _invalid(error: ValidationError) -> ApiError:
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
    return ApiError(422, "invalid_request", details)


async def _read_request(request: Request, max_bytes: int) -> tuple[bytes, MemeOptions]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "multipart form needs a file field named 'image'")
        data = await upload.read(max_bytes + 1)
        fields = {key: value for key, value in form.items() if key != "image" and isinstance(value, str)}
        try:
            options = MemeOptions.model_validate(fields)
        except ValidationError as error:
            raise _invalid(error) from error
    elif content_type.startswith("application/json"):
        body = await request.body()
        if len(body) > max_bytes * 4 // 3 + 1024:
            raise ApiError(413, "image_too_large", f"the request body exceeds {max_bytes} bytes of image")
        try:
            options = MemeJsonRequest.model_validate_json(body)
        except ValidationError as error:
            raise _invalid(error) from error
        try:
            data = base64.b64decode(options.image, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ApiError(422, "invalid_request", "image: not valid base64") from error
    else:
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with an 'image' file, or JSON with base64 'image'"
        )
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"the image exceeds {max_bytes} bytes")
    return data, options


def _decoding_settings(captioner, options: MemeOptions, settings) -> SearchSettings | SamplingSettings:
    max_length = captioner.max_length(options.max_length or settings.max_length)
    length_penalty = settings.length_penalty if options.length_penalty is None else options.length_penalty
    if options.decoding == "sample":
        return SamplingSettings(
            n=options.n,
            temperature=options.temperature,
            top_p=options.top_p,
            max_length=max_length,
            seed=options.seed,
            length_penalty=length_penalty,
        )
    return SearchSettings(
        beam_width=max(options.beam_width or settings.beam_width, options.n),
        n_best=options.n,
        length_penalty=length_penalty,
        max_length=max_length,
    )


async def _until_done_or_disconnected(request: Request, cancel: threading.Event, work) -> CaptionResult:
    """Await `work`; if the client goes away first, tell the decoder to stop."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.2)
        if done:
            return task.result()
        if await request.is_disconnected():
            cancel.set()
            raise ApiError(499, "client_closed_request", "the client went away")


_REQUEST_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    **MemeOptions.model_json_schema()["properties"],
                },
            }
        },
        "application/json": {"schema": MemeJsonRequest.model_json_schema()},
    },
    "required": True,
}


@router.post(
    "/v1/memes",
    response_model=MemeResponse,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}},
)
async def create_meme(request: Request, settings: SettingsDep, session: SessionDep) -> Response:
    """Caption an uploaded image. Answers the rendered meme, or with `Accept: application/json` the
    captions, their scores, the model and how many model calls it took."""
    data, options = await _read_request(request, settings.max_upload_bytes)
    image = open_upload(data)
    try:
        captioner = await run_in_threadpool(session.captioner)
        decoding = _decoding_settings(captioner, options, settings)
        jpeg = await run_in_threadpool(model_input, image, settings.model_input_max_side)
        cancel = threading.Event()
        caption_request = CaptionRequest(
            prefix=options.prefix,
            context_noise=options.noise,
            seed=options.seed,
            timeout_seconds=settings.request_timeout_seconds,
            cancel=cancel,
        )
        result = await _until_done_or_disconnected(
            request, cancel, run_in_threadpool(captioner.caption, jpeg, decoding, caption_request)
        )
    except ModelUnavailableError as error:
        raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error
    except DeadlineExceeded as error:
        raise ApiError(504, "deadline_exceeded", f"no caption within {settings.request_timeout_seconds} s") from error
    except ValueError as error:
        raise ApiError(422, "invalid_image", str(error)) from error

    if "application/json" in request.headers.get("accept", ""):
        return Response(
            MemeResponse(
                captions=[
                    CaptionOut(text=c.text, boxes=c.boxes, score=c.score, log_prob=c.log_prob) for c in result.captions
                ],
                model=ModelOut(name=result.model_name, version=result.model_version, backend=session.backend.name),
                rpcs=result.rpcs,
                width=image.width,
                height=image.height,
            ).model_dump_json(),
            media_type="application/json",
        )
    boxes = result.captions[0].boxes if result.captions else []
    content = await run_in_threadpool(
        render_meme, image, boxes, uppercase=options.uppercase, format=options.format.upper()
    )
    return Response(
        content,
        media_type=MEDIA_TYPES[options.format],
        headers={
            "X-Memefly-Caption": quote(" / ".join(boxes)),
            "X-Memefly-Model-Version": str(result.model_version),
            "X-Memefly-RPCs": str(result.rpcs),
        },
    )

"""POST /v1/memes: an image in, a meme (or its captions as JSON) out."""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import time
from dataclasses import replace
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from starlette.datastructures import UploadFile

from gateway.api.deps import SessionDep, SettingsDep
from gateway.backends import ModelUnavailableError
from gateway.captioner import Caption, CaptionRequest, CaptionResult, ModelSession, UnknownStyleError
from gateway.errors import ApiError
from gateway.images import accepted_formats_text, model_input, open_upload
from gateway.render import render_meme
from gateway.scheduler import DeadlineExceeded
from gateway.search import SamplingSettings, SearchSettings
from gateway.security import ApiKeyRequired
from gateway.settings import Settings
from gateway.templates import Template

router = APIRouter(tags=["memes"])

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_BOX_CHARACTERS = 500
"""Layout time grows with the text: 20 000 characters take seconds to fit into a box."""


class MemeOptions(BaseModel):
    n: int = Field(3, ge=1, le=16, description="How many captions to return (JSON); the image shows the best.")
    decoding: Literal["beam", "sample"] = Field("beam", description="Beam search, or sampling for variety.")
    beam_width: int | None = Field(None, ge=1, le=16)
    length_penalty: float | None = Field(None, ge=0, le=4)
    max_length: int | None = Field(None, ge=1, le=64)
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling only.")
    top_p: float = Field(0.9, gt=0, le=1, description="Sampling only: nucleus mass.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Makes sampling and noise reproducible.")
    rerank: int | None = Field(
        None,
        ge=1,
        le=8,
        description="Sampling only: draw this many captions per caption returned and keep the ones the "
        "image explains best (log P(caption | image) − log P(caption | blank image)); 1 keeps plain samples. "
        "Default: the gateway's MEMEFLY_SAMPLING_RERANK.",
    )
    noise: float = Field(0.0, ge=0, le=2, description="Gaussian noise on the image context, for variety.")
    prefix: str = Field(
        "",
        max_length=200,
        description="The caption's start, which the model completes; end it with a newline "
        "to close the top box so the model writes the bottom one.",
    )
    topic: str = Field(
        "",
        max_length=100,
        description='What the caption is about, in your words ("mondays", "my cat"); by default what '
        "the photo shows. Words the model does not know are dropped (a plural is tried as singular); with none "
        "left, the photo's own concepts are the topic.",
    )
    style: str = Field(
        "",
        max_length=100,
        description="Write in the voice of this template (GET /v1/styles); by default each caption takes a "
        "style that fits the photo and topic.",
    )
    format: Literal["png", "jpeg", "webp"] = "png"
    uppercase: bool = True
    text: list[Annotated[str, StringConstraints(max_length=MAX_BOX_CHARACTERS)]] | None = Field(
        None, max_length=8, description="Your own text, one string a box: rendered as given, no model call."
    )


class MemeJsonRequest(MemeOptions):
    image: str | None = Field(
        None, description=f"The image file's bytes, base64-encoded ({accepted_formats_text()}); a data: URL is fine."
    )
    image_url: str | None = Field(
        None,
        max_length=2048,
        description="An https URL to fetch the image from, if the gateway allows it (MEMEFLY_URL_FETCH_ENABLED).",
    )
    template_id: str | None = Field(
        None,
        max_length=200,
        description="A known template instead of an image (GET /v1/templates).",
        examples=["drake"],
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def _error_responses(*statuses: int) -> dict[int | str, dict]:
    return {status: {"model": ErrorBody} for status in statuses}


_MEME_ERRORS = _error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503, 504)


class TemplateMemeRequest(MemeOptions):
    pass


class CaptionOut(BaseModel):
    text: str
    boxes: list[str]
    score: float
    log_prob: float
    specificity: float | None = Field(
        None, description="log P(caption | image) − log P(caption | blank image), when sampling re-ranked by it."
    )
    topic: str | None = Field(None, description="The topic words the caption was written about.")
    style: str | None = Field(None, description="The template whose voice the caption took.")


class ConceptOut(BaseModel):
    word: str
    probability: float


class ModelOut(BaseModel):
    name: str
    version: int
    backend: str


class MemeResponse(BaseModel):
    captions: list[CaptionOut]
    concepts: list[ConceptOut] = Field(
        default_factory=list, description="What the model saw in the photo: words and probabilities."
    )
    model: ModelOut | None = Field(None, description="Absent when the text was the user's own.")
    rpcs: int = Field(description="Calls made to the model tier for this meme.")
    width: int
    height: int
    permalink: str = Field(description="GET this URL for the rendered meme (the best caption).")


def _invalid(error: ValidationError) -> ApiError:
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
    return ApiError(422, "invalid_request", details)


async def _read_request(request: Request, max_bytes: int) -> tuple[bytes | None, MemeJsonRequest]:
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
            raise _invalid(error) from error
        if isinstance(upload, UploadFile):
            data = await upload.read(max_bytes + 1)
        elif upload is not None:
            raise ApiError(422, "invalid_request", "'image' must be a file field")
    elif content_type.startswith("application/json"):
        try:
            options = MemeJsonRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise _invalid(error) from error
        if options.image is not None:
            data = _decode_base64(options.image)
    else:
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with an 'image' file, or JSON with base64 'image'"
        )
    sources = [data is not None, options.image_url is not None, options.template_id is not None]
    if sum(sources) != 1:
        raise ApiError(422, "invalid_request", "give exactly one of an image, an image_url or a template_id")
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


async def _fetch_image(request: Request, url: str) -> bytes:
    fetcher = request.app.state.url_fetcher
    if fetcher is None:
        raise ApiError(403, "url_fetch_disabled", "this gateway does not fetch image URLs; upload the image instead")
    return await fetcher.fetch(url)


def _decoding_settings(captioner, options: MemeOptions, settings: Settings) -> SearchSettings | SamplingSettings:
    """Beam search keeps every beam's caption (or sampling draws extra) so the content filter can
    drop some and still leave `n`."""
    max_length = captioner.max_length(options.max_length or settings.max_length)
    length_penalty = settings.length_penalty if options.length_penalty is None else options.length_penalty
    if options.decoding == "sample":
        return SamplingSettings(
            n=options.n + 2,
            temperature=options.temperature,
            top_p=options.top_p,
            max_length=max_length,
            seed=options.seed,
            length_penalty=length_penalty,
            rerank=settings.sampling_rerank if options.rerank is None else options.rerank,
        )
    beam_width = max(options.beam_width or settings.beam_width, options.n)
    return SearchSettings(
        beam_width=beam_width,
        n_best=beam_width,
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
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "image_url": {"type": "string", "maxLength": 2048},
                    "template_id": {"type": "string"},
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
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **_MEME_ERRORS},
    dependencies=[ApiKeyRequired],
)
async def create_meme(request: Request, settings: SettingsDep, session: SessionDep) -> Response:
    """Caption an uploaded image or a known template. Answers the rendered meme, or with
    `Accept: application/json` the captions, their scores, the model, how many model calls it took
    and a permalink."""
    deadline = time.monotonic() + settings.request_timeout_seconds
    data, options = await _read_request(request, settings.max_upload_bytes)
    layout = None
    if options.image_url is not None:
        data = await _fetch_image(request, options.image_url)
    elif data is None:
        template = _template(request, options.template_id)
        data, layout = await run_in_threadpool(template.image_path.read_bytes), list(template.layout) or None
    return await _make_meme(request, settings, session, data, layout, options, deadline)


async def _make_meme(
    request: Request,
    settings: Settings,
    session: ModelSession,
    data: bytes,
    layout,
    options: MemeOptions,
    deadline: float,
) -> Response:
    """Within an admission slot: decode the image, caption it (or take the user's text), render."""
    async with request.app.state.admission.slot(deadline):
        image = await run_in_threadpool(open_upload, data, settings.max_image_pixels)
        if options.text is not None:
            return await _respond(request, image, layout, _user_text(options.text, layout), options, None)
        result = await _generate(request, settings, session, image, options, deadline)
        return await _respond(request, image, layout, result, options, session.backend.name)


@router.post(
    "/v1/templates/{template_id}/memes",
    response_model=MemeResponse,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **_MEME_ERRORS},
    dependencies=[ApiKeyRequired],
)
async def create_template_meme(
    template_id: Annotated[str, PathParam(examples=["drake"])],
    body: TemplateMemeRequest,
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
) -> Response:
    """A meme from a known template, with your own text (as memegen does) or the model's."""
    deadline = time.monotonic() + settings.request_timeout_seconds
    template = _template(request, template_id)
    layout = list(template.layout) or None
    data = await run_in_threadpool(template.image_path.read_bytes)
    return await _make_meme(request, settings, session, data, layout, body, deadline)


@router.get(
    "/v1/memes/{meme_id}",
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}},
    response_class=Response,
)
async def get_meme(meme_id: str, request: Request) -> Response:
    """A stored meme, by the permalink a create call returned."""
    stored = await run_in_threadpool(request.app.state.meme_store.get, meme_id)
    if stored is None:
        raise ApiError(404, "not_found", f"no meme {meme_id}")
    content, media_type = stored
    return Response(content, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"})


def _user_text(text: list[str], layout) -> CaptionResult:
    boxes = [line.strip() for line in text]
    if layout is not None and len(boxes) > len(layout):
        raise ApiError(422, "invalid_request", f"this template has {len(layout)} text boxes, not {len(boxes)}")
    return CaptionResult([Caption(boxes, 0.0, 0.0)], "", 0, 0)


def _template(request: Request, template_id: str | None) -> Template:
    template = request.app.state.templates.get(template_id or "")
    if template is None:
        raise ApiError(404, "template_not_found", f"no template {template_id!r}; see GET /v1/templates")
    return template


async def _generate(
    request: Request, settings: Settings, session: ModelSession, image, options: MemeOptions, deadline: float
) -> CaptionResult:
    metrics = request.app.state.metrics
    content_filter = request.app.state.content_filter
    try:
        jpeg = await run_in_threadpool(model_input, image, settings.model_input_max_side)
        cancel = threading.Event()
        caption_request = CaptionRequest(
            prefix=options.prefix,
            context_noise=options.noise,
            seed=options.seed,
            timeout_seconds=max(deadline - time.monotonic(), 1e-3),  # time queued for admission counts
            cancel=cancel,
            topic=options.topic.strip(),
            style=options.style.strip(),
            captions=options.n,
            style_beam_width=settings.style_beam_width,
        )
        result = await _until_done_or_disconnected(
            request,
            cancel,
            run_in_threadpool(
                session.caption,
                jpeg,
                lambda captioner: _decoding_settings(captioner, options, settings),
                caption_request,
            ),
        )
    except ModelUnavailableError as error:
        metrics.backend_errors.labels("unavailable").inc()
        raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error
    except DeadlineExceeded as error:
        metrics.backend_errors.labels("deadline").inc()
        raise ApiError(504, "deadline_exceeded", f"no caption within {settings.request_timeout_seconds} s") from error
    except UnknownStyleError as error:
        code = "unknown_style" if session.captioner().info.contract.conditioned else "unsupported_by_model"
        raise ApiError(422, code, str(error)) from error
    except ValueError as error:
        raise ApiError(422, "invalid_image", str(error)) from error
    allowed = [c for c in result.captions if content_filter.allows(c.text)]
    metrics.memes.labels(session.backend.name).inc()
    metrics.model_calls_per_meme.observe(result.model_calls)
    return replace(result, captions=allowed[: options.n])


async def _respond(
    request: Request,
    image,
    layout,
    result: CaptionResult,
    options: MemeOptions,
    backend: str | None,
    body_type: type[MemeResponse] = MemeResponse,
    **body_fields,
) -> Response:
    """The rendered meme, stored; or with `Accept: application/json`, a `body_type` answer (with
    `body_fields` besides the captions, model and permalink)."""
    boxes = result.captions[0].boxes if result.captions else []
    if layout is not None and len(boxes) > len(layout):
        # A template has as many boxes as it has; the model's extra ones join the last.
        boxes = [*boxes[: len(layout) - 1], " ".join(boxes[len(layout) - 1 :])]
    content = await run_in_threadpool(
        render_meme, image, boxes, layout, uppercase=options.uppercase, format=options.format.upper()
    )
    media_type = MEDIA_TYPES[options.format]
    meme_id = await run_in_threadpool(request.app.state.meme_store.put, content, media_type)
    permalink = str(request.url_for("get_meme", meme_id=meme_id))
    if "application/json" in request.headers.get("accept", ""):
        body = body_type(
            captions=[
                CaptionOut(
                    text=c.text,
                    boxes=c.boxes,
                    score=c.score,
                    log_prob=c.log_prob,
                    specificity=c.specificity,
                    topic=c.topic,
                    style=c.style,
                )
                for c in result.captions
            ],
            concepts=[ConceptOut(word=word, probability=p) for word, p in result.concepts],
            model=ModelOut(name=result.model_name, version=result.model_version, backend=backend) if backend else None,
            rpcs=result.model_calls,
            width=image.width,
            height=image.height,
            permalink=permalink,
            **body_fields,
        )
        return Response(body.model_dump_json(), media_type="application/json", headers={"Location": permalink})
    headers = {"X-Memefly-Caption": quote(" / ".join(boxes)), "Location": permalink}
    if backend:
        headers |= {"X-Memefly-Model-Version": str(result.model_version), "X-Memefly-RPCs": str(result.model_calls)}
    return Response(content, media_type=media_type, headers=headers)

"""POST /v1/memes: an image in, a meme (or its captions as JSON) out. The work is `MemeService`'s."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from gateway.api.deps import MemesDep
from gateway.api.responses import meme_response
from gateway.api.uploads import read_meme_request, with_model_header
from gateway.errors import ApiError
from gateway.schemas import MEDIA_TYPES, MEME_ERRORS, MemeJsonRequest, MemeOptions, MemeResponse, TemplateMemeRequest
from gateway.security import ApiKeyRequired

router = APIRouter(tags=["memes"])


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
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **MEME_ERRORS},
    dependencies=[ApiKeyRequired],
)
async def create_meme(request: Request, memes: MemesDep) -> Response:
    """Caption an uploaded image or a known template. Answers the rendered meme, or with
    `Accept: application/json` the captions, their scores, the model, how many model calls it took
    and a permalink."""
    data, options = await read_meme_request(request, memes.settings.max_upload_bytes)
    picture = await memes.picture(data, options.image_url, options.template_id)
    options = with_model_header(options, request)
    return meme_response(request, await memes.create(picture, options, request.is_disconnected))


@router.post(
    "/v1/templates/{template_id}/memes",
    response_model=MemeResponse,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **MEME_ERRORS},
    dependencies=[ApiKeyRequired],
)
async def create_template_meme(
    template_id: Annotated[str, PathParam(examples=["drake"])],
    body: TemplateMemeRequest,
    request: Request,
    memes: MemesDep,
) -> Response:
    """A meme from a known template, with your own text (as memegen does) or the model's."""
    picture = await memes.picture(template_id=template_id)
    options = with_model_header(body, request)
    return meme_response(request, await memes.create(picture, options, request.is_disconnected))


@router.get(
    "/v1/memes/{meme_id}",
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}},
    response_class=Response,
)
async def get_meme(meme_id: str, memes: MemesDep) -> Response:
    """A stored meme, by the permalink a create call returned."""
    stored = await run_in_threadpool(memes.store.get, meme_id)
    if stored is None:
        raise ApiError(404, "not_found", f"no meme {meme_id}")
    content, media_type = stored
    return Response(content, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000, immutable"})

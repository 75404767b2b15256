"""POST /v1/memes/automatic: a caption you wrote, drawn on the template whose voice explains it best."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from gateway.api.deps import SessionDep, SettingsDep
from gateway.api.memes import MEDIA_TYPES, MemeResponse, _error_responses, _respond, _template
from gateway.backends import ModelUnavailableError
from gateway.captioner import Caption, CaptionResult
from gateway.errors import ApiError
from gateway.images import open_upload
from gateway.security import ApiKeyRequired
from gateway.template_picker import TemplateScore, split_into_boxes

router = APIRouter(tags=["memes"])


class AutomaticMemeRequest(BaseModel):
    text: str = Field(
        min_length=1,
        max_length=500,
        description="Your caption; a newline separates boxes.",
        examples=["memes everywhere"],
    )
    format: Literal["png", "jpeg", "webp"] = "png"
    uppercase: bool = True


class TemplateScoreOut(BaseModel):
    id: str
    score: float = Field(description="How much better than the average template it explains the text (nats).")


class AutomaticMemeResponse(MemeResponse):
    template: str
    templates: list[TemplateScoreOut] = Field(description="The 5 best templates, best first.")


@router.post(
    "/v1/memes/automatic",
    response_model=AutomaticMemeResponse,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **_error_responses(401, 403, 422, 503)},
    dependencies=[ApiKeyRequired],
)
async def automatic_meme(
    body: AutomaticMemeRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """Chooses the template whose voice best explains your text (the model's `score` under each
    template's style) and draws the text in its boxes."""
    deadline = time.monotonic() + settings.request_timeout_seconds
    ranked = await _rank(request, session, body.text)
    template = _template(request, ranked[0].template)
    boxes = split_into_boxes(body.text, len(template.layout) or 2)
    async with request.app.state.admission.slot(deadline):
        data = await run_in_threadpool(template.image_path.read_bytes)
        image = await run_in_threadpool(open_upload, data, settings.max_image_pixels)
        result = CaptionResult([Caption(boxes, ranked[0].score, 0.0)], "", 0, 1)
        response = await _respond(
            request,
            image,
            list(template.layout) or None,
            result,
            body,
            None,
            AutomaticMemeResponse,
            template=template.id,
            templates=[TemplateScoreOut(id=t.template, score=t.score) for t in ranked],
        )
    response.headers["X-Memefly-Template"] = template.id
    return response


async def _rank(request: Request, session, text: str) -> list[TemplateScore]:
    try:
        captioner = session.captioner()
        picker = captioner.template_picker(request.app.state.templates.all())
        if not picker.available:
            raise ApiError(422, "no_styles", "the served model has no template styles to choose from")
        return await run_in_threadpool(picker.pick, text)
    except ModelUnavailableError as error:
        raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error

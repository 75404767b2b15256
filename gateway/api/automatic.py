"""POST /v1/memes/automatic: a caption you wrote, drawn on the template whose voice explains it best."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.api.deps import MemesDep
from gateway.api.responses import meme_response
from gateway.schemas import (
    MEDIA_TYPES,
    AutomaticMemeRequest,
    AutomaticMemeResponse,
    MemeOptions,
    TemplateScoreOut,
    error_responses,
)
from gateway.security import ApiKeyRequired

router = APIRouter(tags=["memes"])


@router.post(
    "/v1/memes/automatic",
    response_model=AutomaticMemeResponse,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}, **error_responses(401, 403, 422, 503)},
    dependencies=[ApiKeyRequired],
)
async def automatic_meme(body: AutomaticMemeRequest, request: Request, memes: MemesDep) -> Response:
    """Chooses the template whose voice best explains your text (the model's `score` under each
    template's style) and draws the text in its boxes."""
    meme, template, ranked = await memes.automatic(body.text, MemeOptions(format=body.format, uppercase=body.uppercase))
    response = meme_response(
        request,
        meme,
        AutomaticMemeResponse,
        template=template.id,
        templates=[TemplateScoreOut(id=t.template, score=t.score) for t in ranked],
    )
    response.headers["X-Memefly-Template"] = template.id
    return response

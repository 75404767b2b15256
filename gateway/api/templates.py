"""GET /v1/templates: the known meme templates."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from gateway.api.deps import MemesDep, TemplatesDep
from gateway.templates import THUMBNAIL_SIDE, Template, thumbnail_jpeg

router = APIRouter(tags=["templates"])


class TextBoxOut(BaseModel):
    anchor_x: float
    anchor_y: float
    scale_x: float
    scale_y: float
    align: str
    color: str
    angle: float


class TemplateOut(BaseModel):
    id: str
    name: str
    aliases: list[str]
    width: int
    height: int
    boxes: int
    example: list[str]
    image_url: str
    thumbnail_url: str = Field(
        description=f"The image at most {THUMBNAIL_SIDE} px on its longest side (the gallery's)."
    )


class TemplateDetail(TemplateOut):
    text_boxes: list[TextBoxOut]


def _summary(request: Request, template: Template) -> dict:
    return {
        "id": template.id,
        "name": template.name,
        "aliases": list(template.aliases),
        "width": template.width,
        "height": template.height,
        "boxes": len(template.layout) or 2,
        "example": list(template.example),
        "image_url": str(request.url_for("template_image", template_id=template.id)),
        "thumbnail_url": str(request.url_for("template_thumbnail", template_id=template.id)),
    }


@router.get("/v1/templates", response_model=list[TemplateOut])
async def list_templates(request: Request, templates: TemplatesDep) -> list[dict]:
    return [_summary(request, t) for t in templates.all()]


@router.get("/v1/templates/{template_id}", response_model=TemplateDetail)
async def get_template(template_id: str, request: Request, memes: MemesDep) -> dict:
    template = memes.template(template_id)
    boxes = [TextBoxOut(**{f: getattr(b, f) for f in TextBoxOut.model_fields}) for b in template.layout]
    return {**_summary(request, template), "text_boxes": boxes}


@router.get("/v1/templates/{template_id}/image", response_class=FileResponse)
async def template_image(template_id: str, memes: MemesDep) -> FileResponse:
    """The blank template image."""
    return FileResponse(memes.template(template_id).image_path, media_type="image/jpeg")


@router.get(
    "/v1/templates/{template_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}}
)
async def template_thumbnail(template_id: str, memes: MemesDep) -> Response:
    """The template image, small: what the page's gallery shows."""
    content = await run_in_threadpool(thumbnail_jpeg, memes.template(template_id).image_path)
    return Response(content, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

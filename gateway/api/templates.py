"""GET /v1/templates: the known meme templates."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from gateway.api.deps import MemesDep, TemplatesDep
from gateway.templates import Template

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

"""GET /v1/styles: the template voices the served model can write in."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway.api.deps import SessionDep, TemplatesDep
from gateway.backends import ModelUnavailableError
from gateway.errors import ApiError

router = APIRouter(tags=["styles"])


class StyleOut(BaseModel):
    id: str = Field(description="Pass as `style` to POST /v1/memes.")
    name: str
    template_url: str | None = Field(None, description="The template, when this gateway serves it.")


@router.get("/v1/styles", response_model=list[StyleOut])
def list_styles(request: Request, session: SessionDep, templates: TemplatesDep) -> list[StyleOut]:
    """The styles of the model version served now (empty for a model without styles)."""
    try:
        contract = session.captioner().info.contract
    except ModelUnavailableError as error:
        raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error
    styles = []
    for style in contract.styles:
        template = templates.get(style)
        styles.append(
            StyleOut(
                id=style,
                name=template.name if template else style,
                template_url=str(request.url_for("get_template", template_id=style)) if template else None,
            )
        )
    return styles

"""memegen-compatible URLs (memegen.link): `/images/<template>/<line>/<line>.png` and `/templates`.

Every image goes through the same code as POST /v1/templates/{id}/memes (`MemeService`): the text of
the URL is the user's text, and `/images/<template>.png`, with no text, is the model's caption.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image, ImageEnhance, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.api.deps import MemesDep, TemplatesDep
from gateway.api.responses import meme_response
from gateway.api.uploads import invalid_request, with_model_header
from gateway.errors import ApiError
from gateway.meme_service import MemeService, Picture
from gateway.memegen_text import MAX_SEGMENT_LENGTH, decode_segment, encode_text
from gateway.render import TextBox
from gateway.schemas import MEDIA_TYPES, TemplateMemeRequest, error_responses
from gateway.security import ApiKeyRequired
from gateway.templates import Template

router = APIRouter(tags=["memegen"])

EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
MIN_SIDE = 10
"""memegen refuses a width or height under 10 pixels."""
MAX_SIDE = 2000
MAX_PIXELS = 1920 * 1080
"""memegen's cap: a larger size shrinks by quarters until it fits (`fit_image` in app/utils/images.py)."""
PAD_DARKNESS = 0.4
PAD_BLUR = 5
Size = tuple[int, int]
_URL_SAFE = "!$'()*+,;=:@"
"""Characters a path segment may hold as they are (RFC 3986 pchar), so example URLs stay readable."""

Width = Annotated[
    int | None,
    Query(ge=MIN_SIDE, le=MAX_SIDE, description="Scale to this width; with `height`, fit and pad to exactly both."),
]
Height = Annotated[
    int | None,
    Query(ge=MIN_SIDE, le=MAX_SIDE, description="Scale to this height; with `width`, fit and pad to exactly both."),
]
_IMAGE_RESPONSES = {
    200: {"content": {media: {} for media in sorted(set(MEDIA_TYPES.values()))}},
    **error_responses(404, 414, 415, 422, 429, 503, 504),
}


class MemegenExample(BaseModel):
    text: list[str]
    url: str


class MemegenTemplate(BaseModel):
    """A template as memegen's `GET /templates/{id}` describes one."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str
    lines: int = Field(description="How many text boxes, so how many `/`-separated segments are drawn.")
    overlays: int
    styles: list[str]
    blank: str = Field(description="The template with no text.")
    example: MemegenExample
    source: str | None
    keywords: list[str]
    self_url: str = Field(alias="_self")


@router.get(
    "/images/{template_id}/{text_path:path}",
    response_class=Response,
    responses=_IMAGE_RESPONSES,
    summary="A meme with your text, memegen-style",
)
async def memegen_image(
    template_id: str,
    text_path: str,
    request: Request,
    memes: MemesDep,
    width: Width = None,
    height: Height = None,
) -> Response:
    """`<line>/<line>/….png` (or `.jpg`, `.jpeg`, `.webp`): one encoded path segment a text box
    (`_` or `-` is a space, `__` is `_`, `~q` is `?`, … as on memegen.link); `_` is an empty box."""
    lines, image_format = parse_text_path(text_path)
    return await _render(request, memes, template_id, lines, image_format, width, height)


@router.get(
    "/images/{template_file}",
    response_class=Response,
    responses=_IMAGE_RESPONSES,
    dependencies=[ApiKeyRequired],
    summary="A meme with the model's caption",
)
async def memegen_captioned_image(
    template_file: str,
    request: Request,
    memes: MemesDep,
    width: Width = None,
    height: Height = None,
) -> Response:
    """`<template>.png` (or `.jpg`, `.jpeg`, `.webp`): the model writes the caption."""
    template_id, image_format = split_extension(template_file)
    return await _render(request, memes, template_id, None, image_format, width, height)


@router.get("/templates", response_model=list[MemegenTemplate])
async def list_memegen_templates(request: Request, templates: TemplatesDep) -> list[dict]:
    """Every template, in memegen's shape."""
    return [describe_template(request, template) for template in templates.all()]


@router.get("/templates/{template_id}", response_model=MemegenTemplate, responses=error_responses(404))
async def get_memegen_template(template_id: str, request: Request, memes: MemesDep) -> dict:
    """One template, in memegen's shape."""
    return describe_template(request, memes.template(template_id))


def split_extension(name: str) -> tuple[str, str]:
    """`buzz.jpg` → (`buzz`, `jpeg`): the stem and the output format, or a 415 `ApiError`."""
    stem, dot, extension = name.rpartition(".")
    image_format = EXTENSIONS.get(extension.lower()) if dot else None
    if image_format is None:
        accepted = ", ".join(f".{e}" for e in EXTENSIONS)
        raise ApiError(415, "unsupported_image_format", f"end the URL in one of {accepted}, not {name!r}")
    return stem, image_format


def parse_text_path(text_path: str) -> tuple[list[str], str]:
    """The decoded text boxes and the output format of `<line>/<line>.png`, or a 414 or 415 `ApiError`."""
    slug, image_format = split_extension(text_path)
    segments = slug.split("/")
    for number, segment in enumerate(segments, 1):
        size = len(segment.encode("utf-8", "surrogatepass"))
        if size > MAX_SEGMENT_LENGTH:
            raise ApiError(
                414, "text_too_long", f"text segment {number} is {size} bytes; at most {MAX_SEGMENT_LENGTH} fit"
            )
    return [decode_segment(segment) for segment in segments], image_format


def output_size(source: Size, width: int | None, height: int | None) -> tuple[Size, Size]:
    """The picture's size and the whole image's, as memegen sizes them: one side given scales to it
    keeping the aspect ratio; both given fit the picture inside and pad it to exactly that size."""
    source_width, source_height = source
    if width and height:
        canvas = _capped(width, height)
        if canvas[0] * source_height < canvas[1] * source_width:
            picture = (canvas[0], max(1, round(canvas[0] * source_height / source_width)))
        else:
            picture = (max(1, round(canvas[1] * source_width / source_height)), canvas[1])
        return picture, canvas
    if width:
        size = _capped(width, width * source_height / source_width)
    elif height:
        size = _capped(height * source_width / source_height, height)
    else:
        size = source
    return size, size


def _capped(width: float, height: float) -> Size:
    # memegen caps only a requested width × height; a single side is capped here too, since a tall
    # template at width=2000 would otherwise render tens of megapixels.
    while width * height > MAX_PIXELS:
        width, height = width * 0.75, height * 0.75
    return max(1, round(width)), max(1, round(height))


async def _render(
    request: Request,
    memes: MemeService,
    template_id: str,
    lines: list[str] | None,
    image_format: str,
    width: int | None,
    height: int | None,
) -> Response:
    template = memes.template(template_id)
    if lines is not None:
        # memegen draws one segment in each of the template's boxes and ignores the segments past them.
        lines = lines[: len(template.layout) or 2]
    try:
        options = TemplateMemeRequest.model_validate({"text": lines, "format": image_format})
    except ValidationError as error:
        raise invalid_request(error) from error
    picture = await run_in_threadpool(sized_template, template, width, height)
    options = with_model_header(options, request)
    return meme_response(request, await memes.create(picture, options, request.is_disconnected))


def sized_template(template: Template, width: int | None, height: int | None) -> Picture:
    """The template's image at the asked size, and its text boxes on that image.

    The picture is resized before the text is drawn, so the text is sharp at any size, as in memegen.
    When it is padded, the boxes move onto the picture, so the text stays off the padding.
    """
    if not width and not height:
        return MemeService.template_picture(template)
    layout = list(template.layout) or None
    with Image.open(template.image_path) as source:
        image = source.convert("RGB")
    picture_size, canvas_size = output_size(image.size, width, height)
    picture = image.resize(picture_size, Image.Resampling.LANCZOS)
    if picture_size != canvas_size:
        # memegen pads with a darkened, blurred stretch of the picture rather than flat bars.
        canvas = ImageEnhance.Brightness(image.resize(canvas_size, Image.Resampling.BILINEAR)).enhance(PAD_DARKNESS)
        canvas = canvas.filter(ImageFilter.GaussianBlur(PAD_BLUR))
        offset = ((canvas_size[0] - picture_size[0]) // 2, (canvas_size[1] - picture_size[1]) // 2)
        canvas.paste(picture, offset)
        picture = canvas
        if layout is not None:
            layout = [_moved(box, offset, picture_size, canvas_size) for box in layout]
    buffer = io.BytesIO()
    picture.save(buffer, format="BMP")  # lossless and quick to write; only `MemeService.make` reads it
    return Picture(buffer.getvalue(), layout)


def _moved(box: TextBox, offset: Size, picture: Size, canvas: Size) -> TextBox:
    """A box given as fractions of the picture, as fractions of the padded canvas it sits in."""
    return replace(
        box,
        anchor_x=(offset[0] + box.anchor_x * picture[0]) / canvas[0],
        anchor_y=(offset[1] + box.anchor_y * picture[1]) / canvas[1],
        scale_x=box.scale_x * picture[0] / canvas[0],
        scale_y=box.scale_y * picture[1] / canvas[1],
    )


def describe_template(request: Request, template: Template) -> dict:
    """`template` in memegen's JSON shape, its URLs pointing at this gateway."""
    example = list(template.example) if any(template.example) else []
    return {
        "id": template.id,
        "name": template.name,
        "lines": len(template.layout) or 2,
        "overlays": 0,
        "styles": [],
        "blank": _image_url(request, template.id, [""]),
        "example": {"text": example, "url": _image_url(request, template.id, example)},
        "source": None,
        "keywords": list(template.aliases),
        "_self": str(request.url_for("get_memegen_template", template_id=template.id)),
    }


def _image_url(request: Request, template_id: str, lines: list[str], extension: str = "png") -> str:
    text_path = "/".join(quote(encode_text(line), safe=_URL_SAFE) for line in lines or [""])
    return str(request.url_for("memegen_image", template_id=template_id, text_path=f"{text_path}.{extension}"))

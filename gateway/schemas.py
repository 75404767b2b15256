"""The API's request and response bodies: what a meme request may ask, and what it answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from gateway.images import accepted_formats_text

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_BOX_CHARACTERS = 500
"""Layout time grows with the text: 20 000 characters take seconds to fit into a box."""


class MemeOptions(BaseModel):
    n: int | None = Field(
        None,
        ge=1,
        le=16,
        description="How many captions to return (JSON); the image shows the best. Default: the gateway's "
        "MEMEFLY_N_BEST.",
    )
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
    model: str = Field(
        "",
        max_length=100,
        description="Which served model writes the caption: its name, or its decoder (`gru`, `transformer`). "
        "Default: the `X-Memefly-Model` header, else the gateway's traffic split (MEMEFLY_MODEL_TRAFFIC), else "
        "MEMEFLY_MODEL_NAME.",
    )
    explain: bool = Field(
        False,
        description="Also return, for each word, where the model looked on the photo (a transformer model's "
        "attention over the 7×7 image grid); one more model call, made only when asked.",
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


def error_responses(*statuses: int) -> dict[int | str, dict]:
    return {status: {"model": ErrorBody} for status in statuses}


MEME_ERRORS = error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503, 504)


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
    attention: list[WordAttentionOut] | None = Field(
        None, description="With `explain`: each word, and where the model looked while writing it."
    )


class WordAttentionOut(BaseModel):
    word: str
    weights: list[float] = Field(
        description="Attention over the image grid (a square, row-major from the top left; sums to 1)."
    )


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

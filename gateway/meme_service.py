"""Making a meme, one way for every caller: picture, decoding settings, caption, filter, render, store.

The routes, `memefly generate` and the bench all come through `MemeService`, so each gets the same
content filter, the same decoding rules, the same rerun when the model version changes mid-request
and the same metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from fastapi.concurrency import run_in_threadpool
from PIL import Image

from gateway.admission import Admission
from gateway.backends import ModelUnavailableError
from gateway.captioner import (
    Caption,
    CaptionRequest,
    CaptionResult,
    ModelSession,
    UnknownStyleError,
    UnsupportedByModelError,
)
from gateway.content_filter import ContentFilter
from gateway.errors import ApiError
from gateway.images import model_input, open_upload
from gateway.metrics import Metrics
from gateway.model_router import ModelRouter, UnknownModelError
from gateway.render import TextBox, render_meme
from gateway.scheduler import DeadlineExceeded
from gateway.schemas import MEDIA_TYPES, MemeOptions
from gateway.search import SamplingSettings, SearchSettings
from gateway.settings import Settings
from gateway.storage import MemeStore
from gateway.template_picker import TemplateScore, split_into_boxes
from gateway.templates import Template, TemplateStore
from gateway.url_fetch import UrlFetcher

DISCONNECT_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Picture:
    """What a meme is drawn on: the image file's bytes, and the template's text boxes if it is one."""

    data: bytes
    layout: list[TextBox] | None = None


@dataclass(frozen=True)
class Meme:
    content: bytes
    media_type: str
    boxes: list[str]
    """The text drawn: the best caption's boxes, fitted to the template's boxes."""
    result: CaptionResult
    backend: str | None
    """The model tier's backend; None when the text was the user's own."""
    width: int
    height: int
    meme_id: str | None
    """The stored meme's id (None when not stored)."""


def decoding_settings(
    options: MemeOptions, settings: Settings, model_max_length: int
) -> SearchSettings | SamplingSettings:
    """The search a request's options ask for, within the gateway's defaults and the model's limits.

    Beam search keeps every beam's caption (sampling draws two extra) so the content filter can drop
    some and still leave `n`."""
    wanted = options.n or settings.n_best
    requested_length = options.max_length or settings.max_length
    max_length = min(requested_length or model_max_length, model_max_length)
    length_penalty = settings.length_penalty if options.length_penalty is None else options.length_penalty
    if options.decoding == "sample":
        return SamplingSettings(
            n=wanted + 2,
            temperature=options.temperature,
            top_p=options.top_p,
            max_length=max_length,
            seed=options.seed,
            length_penalty=length_penalty,
            rerank=settings.sampling_rerank if options.rerank is None else options.rerank,
        )
    beam_width = max(options.beam_width or settings.beam_width, wanted)
    return SearchSettings(
        beam_width=beam_width, n_best=beam_width, length_penalty=length_penalty, max_length=max_length
    )


class MemeService:
    """Everything start-up builds that a meme needs, and the one pipeline that uses it."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRouter,
        templates: TemplateStore,
        store: MemeStore | None,
        content_filter: ContentFilter,
        metrics: Metrics,
        admission: Admission | None = None,
        url_fetcher: UrlFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.templates = templates
        self.store = store
        self.content_filter = content_filter
        self.metrics = metrics
        self.admission = admission
        self.url_fetcher = url_fetcher

    @property
    def session(self) -> ModelSession:
        """The default model's session (text to template, styles, readiness)."""
        return self.models.default_session

    # The source

    def template(self, template_id: str | None) -> Template:
        template = self.templates.get(template_id or "")
        if template is None:
            raise ApiError(404, "template_not_found", f"no template {template_id!r}; see GET /v1/templates")
        return template

    async def picture(
        self, data: bytes | None = None, image_url: str | None = None, template_id: str | None = None
    ) -> Picture:
        """The picture from exactly one of: uploaded bytes, an image URL, a template id."""
        if sum(source is not None for source in (data, image_url, template_id)) != 1:
            raise ApiError(422, "invalid_request", "give exactly one of an image, an image_url or a template_id")
        if data is not None:
            return Picture(data)
        if image_url is not None:
            if self.url_fetcher is None:
                raise ApiError(
                    403, "url_fetch_disabled", "this gateway does not fetch image URLs; upload the image instead"
                )
            return Picture(await self.url_fetcher.fetch(image_url))
        return await run_in_threadpool(self.template_picture, self.template(template_id))

    @staticmethod
    def template_picture(template: Template) -> Picture:
        return Picture(template.image_path.read_bytes(), list(template.layout) or None)

    # The whole pipeline

    async def create(
        self,
        picture: Picture,
        options: MemeOptions,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        caption: CaptionResult | None = None,
    ) -> Meme:
        """`make` within an admission slot, off the event loop; stops decoding if the client goes away.

        `caption`: text chosen before (text to template), drawn as it is."""
        deadline = time.monotonic() + self.settings.request_timeout_seconds
        cancel = threading.Event()
        async with self.admission.slot(deadline) if self.admission else contextlib.nullcontext():
            work = run_in_threadpool(self.make, picture, options, deadline, cancel, True, caption)
            return await self._until_done_or_disconnected(work, cancel, is_disconnected)

    def make(
        self,
        picture: Picture,
        options: MemeOptions,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        store: bool = True,
        caption: CaptionResult | None = None,
    ) -> Meme:
        """Open the picture, caption it (or take the user's text), render, and store the meme."""
        if deadline is None:
            deadline = time.monotonic() + self.settings.request_timeout_seconds
        image = open_upload(picture.data, self.settings.max_image_pixels)
        backend = None
        if caption is not None:
            result = caption
        elif options.text is not None:
            result = _user_text(options.text, picture.layout)
        else:
            jpeg = model_input(image, self.settings.model_input_max_side)
            result, backend = self.caption_with_backend(jpeg, options, deadline, cancel)
        boxes = _fitted(result.captions[0].boxes if result.captions else [], picture.layout)
        content = self.render(image, boxes, picture.layout, options)
        media_type = MEDIA_TYPES[options.format]
        meme_id = self.store.put(content, media_type) if store and self.store is not None else None
        return Meme(content, media_type, boxes, result, backend, image.width, image.height, meme_id)

    # The stages

    def caption(
        self, image_jpeg: bytes, options: MemeOptions, deadline: float, cancel: threading.Event | None = None
    ) -> CaptionResult:
        """The model's captions for the model-ready JPEG, filtered, at most `n`; API errors for what fails."""
        return self.caption_with_backend(image_jpeg, options, deadline, cancel)[0]

    def caption_with_backend(
        self, image_jpeg: bytes, options: MemeOptions, deadline: float, cancel: threading.Event | None = None
    ) -> tuple[CaptionResult, str]:
        """`caption`, and the name of the backend that served the model the request got."""
        wanted = options.n or self.settings.n_best
        request = CaptionRequest(
            prefix=options.prefix,
            context_noise=options.noise,
            seed=options.seed,
            timeout_seconds=max(deadline - time.monotonic(), 1e-3),  # time queued for admission counts
            cancel=cancel,
            topic=options.topic.strip(),
            style=options.style.strip(),
            captions=wanted,
            style_beam_width=self.settings.style_beam_width,
            explain=options.explain,
        )
        try:
            model, session = self.models.pick(options.model)
            result = session.caption(
                image_jpeg,
                lambda captioner: decoding_settings(options, self.settings, captioner.info.contract.max_length),
                request,
            )
        except UnknownModelError as error:
            raise ApiError(422, "unknown_model", str(error)) from error
        except ModelUnavailableError as error:
            self.metrics.backend_errors.labels("unavailable").inc()
            raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error
        except DeadlineExceeded as error:
            self.metrics.backend_errors.labels("deadline").inc()
            raise ApiError(
                504, "deadline_exceeded", f"no caption within {self.settings.request_timeout_seconds} s"
            ) from error
        except UnsupportedByModelError as error:
            raise ApiError(422, "unsupported_by_model", str(error)) from error
        except UnknownStyleError as error:
            code = "unknown_style" if session.captioner().info.contract.conditioned else "unsupported_by_model"
            raise ApiError(422, code, str(error)) from error
        except ValueError as error:
            raise ApiError(422, "invalid_image", str(error)) from error
        allowed = [c for c in result.captions if self.content_filter.allows(c.text)]
        self.metrics.memes.labels(session.backend.name, model).inc()
        self.metrics.model_calls_per_meme.observe(result.model_calls)
        return replace(result, captions=allowed[:wanted]), session.backend.name

    @staticmethod
    def render(image: Image.Image, boxes: list[str], layout: list[TextBox] | None, options: MemeOptions) -> bytes:
        return render_meme(image, boxes, layout, uppercase=options.uppercase, format=options.format.upper())

    # Text to template

    def rank_templates(self, text: str) -> list[TemplateScore]:
        """The templates whose voice best explains `text`, best first (the model's `score`)."""
        try:
            picker = self.session.captioner().template_picker(self.templates.all())
            if not picker.available:
                raise ApiError(422, "no_styles", "the served model has no template styles to choose from")
            return picker.pick(text)
        except ModelUnavailableError as error:
            raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error

    async def automatic(self, text: str, options: MemeOptions) -> tuple[Meme, Template, list[TemplateScore]]:
        """`text` drawn on the template that explains it best, with the ranking behind the choice."""
        ranked = await run_in_threadpool(self.rank_templates, text)
        template = self.template(ranked[0].template)
        boxes = split_into_boxes(text, len(template.layout) or 2)
        picture = await run_in_threadpool(self.template_picture, template)
        caption = CaptionResult([Caption(boxes, ranked[0].score, 0.0)], "", 0, 1)
        return await self.create(picture, options, caption=caption), template, ranked

    @staticmethod
    async def _until_done_or_disconnected(
        work: Awaitable[Meme], cancel: threading.Event, is_disconnected: Callable[[], Awaitable[bool]] | None
    ) -> Meme:
        """Await `work`; if the client goes away first, tell the decoder to stop."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if is_disconnected is not None and await is_disconnected():
                cancel.set()
                raise ApiError(499, "client_closed_request", "the client went away")


def _user_text(text: list[str], layout: list[TextBox] | None) -> CaptionResult:
    boxes = [line.strip() for line in text]
    if layout is not None and len(boxes) > len(layout):
        raise ApiError(422, "invalid_request", f"this template has {len(layout)} text boxes, not {len(boxes)}")
    return CaptionResult([Caption(boxes, 0.0, 0.0)], "", 0, 0)


def _fitted(boxes: list[str], layout: list[TextBox] | None) -> list[str]:
    """A template has as many boxes as it has; the model's extra ones join the last."""
    if layout is not None and len(boxes) > len(layout):
        return [*boxes[: len(layout) - 1], " ".join(boxes[len(layout) - 1 :])]
    return boxes

"""The FastAPI application: settings and the model session are made at start-up and injected."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.admission import Admission
from gateway.api import automatic, health, memegen, memes, page, styles, templates
from gateway.api import metrics as metrics_routes
from gateway.api import models as model_routes
from gateway.backends import ModelBackend, ModelInfo, ModelUnavailableError
from gateway.captioner import ModelSession
from gateway.content_filter import ContentFilter
from gateway.draining import Drain, DrainingMiddleware
from gateway.errors import install_error_handlers
from gateway.images import pillow_pixel_limit
from gateway.limits import BodySizeLimitMiddleware, max_body_bytes
from gateway.logs import RequestIdMiddleware, configure_logging
from gateway.meme_service import MemeService
from gateway.metrics import Metrics, MetricsMiddleware
from gateway.model_router import ModelRouter
from gateway.scheduler import SchedulerSettings
from gateway.security import install_cors
from gateway.settings import Settings
from gateway.storage import LocalMemeStore, MemeStore, S3MemeStore
from gateway.templates import TemplateStore
from gateway.url_fetch import UrlFetcher

log = logging.getLogger(__name__)


def make_backend(settings: Settings, model_name: str | None = None) -> ModelBackend:
    """The backend for `model_name` (default: the settings' own) on the settings' model tier."""
    model_name = model_name or settings.model_name
    if settings.backend == "embedded":
        from gateway.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings.model_base_path, model_name)
    if settings.backend == "sagemaker":
        from gateway.backends.sagemaker import SageMakerBackend, SageMakerGenerateBackend

        sagemaker = SageMakerGenerateBackend if settings.sagemaker_mode == "generate" else SageMakerBackend
        return sagemaker(
            settings.sagemaker_endpoint_name,
            model_name,
            settings.sagemaker_region,
            model_version=settings.sagemaker_model_versions.get(model_name, settings.sagemaker_model_version),
            endpoint_url=settings.sagemaker_endpoint_url,
            connect_timeout_seconds=settings.sagemaker_connect_timeout_seconds,
            read_timeout_seconds=settings.rpc_timeout_seconds,
            max_attempts=settings.sagemaker_max_attempts,
        )
    from gateway.backends.tfserving import TfServingBackend

    return TfServingBackend(settings.tfserving_target, model_name, settings.rpc_timeout_seconds)


def _log_version_switch(info: ModelInfo) -> None:
    log.info("serving model version", extra={"model": info.name, "version": info.version})


def make_meme_store(settings: Settings) -> MemeStore:
    if settings.meme_store_s3_bucket:
        return S3MemeStore(settings.meme_store_s3_bucket, settings.meme_store_s3_prefix)
    return LocalMemeStore(settings.meme_store_dir)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)

    metrics = Metrics()
    drain = Drain()
    admission = Admission(settings.max_concurrent_memes, settings.max_queued_memes, metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        names = [settings.model_name, *(name for name in settings.models if name != settings.model_name)]
        sessions = {
            name: ModelSession(
                make_backend(settings, name),
                SchedulerSettings(
                    max_batch_beams=settings.max_batch_beams,
                    batch_wait_seconds=settings.batch_wait_ms / 1000,
                    on_decode_batch=metrics.decode_batch.observe,
                    encode_workers=settings.encode_calls_in_flight,
                ),
                version_check_seconds=settings.version_check_seconds,
                on_version_switch=_log_version_switch,
            )
            for name in names
        }
        models = ModelRouter(sessions, settings.model_name, settings.model_traffic)
        for session in sessions.values():
            try:
                session.captioner()
            except ModelUnavailableError:
                pass  # not ready yet: /readyz says so, and the first request tries again
        app.state.settings = settings
        app.state.session = models.default_session
        app.state.metrics = metrics
        app.state.memes = MemeService(
            settings,
            models,
            TemplateStore(settings.templates_dir),
            make_meme_store(settings),
            ContentFilter.from_settings(settings.content_filter, settings.blocked_words_file),
            metrics,
            admission,
            UrlFetcher(settings.max_upload_bytes, settings.url_fetch_timeout_seconds, settings.url_fetch_max_redirects)
            if settings.url_fetch_enabled
            else None,
        )
        with pillow_pixel_limit(settings.max_image_pixels):
            yield
        # uvicorn has already waited for open connections; any other server may not have.
        drain.start()
        await drain.wait_idle(settings.request_timeout_seconds)
        models.close()

    app = FastAPI(
        title="memefly",
        version="0.1.0",
        description="Photo in, meme out: a neural caption drawn on your image.",
        lifespan=lifespan,
    )
    app.state.drain = drain  # before start-up: a stop signal may come at any time (gateway/server.py)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes(settings.max_upload_bytes))
    app.add_middleware(DrainingMiddleware, drain=drain)
    install_cors(app, settings.cors_allow_origins)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Added last, so outermost: the request id exists before any other middleware or route runs.
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    app.include_router(automatic.router)
    app.include_router(memes.router)
    app.include_router(templates.router)
    app.include_router(styles.router)
    app.include_router(model_routes.router)
    app.include_router(memegen.router)
    app.include_router(page.router)
    return app

"""The FastAPI application: settings and the model session are made at start-up and injected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api import health, memes, page, templates
from gateway.api import metrics as metrics_routes
from gateway.backends import ModelBackend, ModelUnavailableError
from gateway.captioner import ModelSession
from gateway.content_filter import ContentFilter
from gateway.errors import install_error_handlers
from gateway.metrics import Metrics, MetricsMiddleware
from gateway.settings import Settings
from gateway.storage import LocalMemeStore, MemeStore, S3MemeStore
from gateway.templates import TemplateStore


def make_backend(settings: Settings) -> ModelBackend:
    if settings.backend == "embedded":
        from gateway.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings.model_base_path, settings.model_name)
    if settings.backend == "sagemaker":
        from gateway.backends.sagemaker import SageMakerBackend

        return SageMakerBackend(
            settings.sagemaker_endpoint_name,
            settings.model_name,
            settings.sagemaker_region,
            model_version=settings.sagemaker_model_version,
            endpoint_url=settings.sagemaker_endpoint_url,
            connect_timeout_seconds=settings.sagemaker_connect_timeout_seconds,
            read_timeout_seconds=settings.rpc_timeout_seconds,
            max_attempts=settings.sagemaker_max_attempts,
        )
    from gateway.backends.tfserving import TfServingBackend

    return TfServingBackend(settings.tfserving_target, settings.model_name, settings.rpc_timeout_seconds)


def make_meme_store(settings: Settings) -> MemeStore:
    if settings.meme_store_s3_bucket:
        return S3MemeStore(settings.meme_store_s3_bucket, settings.meme_store_s3_prefix)
    return LocalMemeStore(settings.meme_store_dir)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = ModelSession(
            make_backend(settings),
            settings.max_batch_beams,
            settings.batch_wait_ms / 1000,
            on_decode_batch=metrics.decode_batch.observe,
            version_check_seconds=settings.version_check_seconds,
        )
        try:
            session.captioner()
        except ModelUnavailableError:
            pass  # not ready yet: /readyz says so, and the first request tries again
        app.state.settings = settings
        app.state.session = session
        app.state.metrics = metrics
        app.state.templates = TemplateStore(settings.templates_dir)
        app.state.meme_store = make_meme_store(settings)
        app.state.content_filter = ContentFilter.from_settings(settings.content_filter, settings.blocked_words_file)
        yield
        session.close()

    app = FastAPI(
        title="memefly",
        version="0.1.0",
        description="Photo in, meme out: a neural caption drawn on your image.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    app.include_router(memes.router)
    app.include_router(templates.router)
    app.include_router(page.router)
    return app

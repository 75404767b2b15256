"""The FastAPI application: settings and the model session are made at start-up and injected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api import health, memes
from gateway.backends import ModelBackend, ModelUnavailableError
from gateway.captioner import ModelSession
from gateway.errors import install_error_handlers
from gateway.settings import Settings


def make_backend(settings: Settings) -> ModelBackend:
    if settings.backend == "embedded":
        from gateway.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings.model_base_path, settings.model_name)
    from gateway.backends.tfserving import TfServingBackend

    return TfServingBackend(settings.tfserving_target, settings.model_name, settings.rpc_timeout_seconds)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = ModelSession(make_backend(settings), settings.max_batch_beams, settings.batch_wait_ms / 1000)
        try:
            session.captioner()
        except ModelUnavailableError:
            pass  # not ready yet: /readyz says so, and the first request tries again
        app.state.settings = settings
        app.state.session = session
        yield
        session.close()

    app = FastAPI(
        title="memefly",
        version="0.1.0",
        description="Photo in, meme out: a neural caption drawn on your image.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(memes.router)
    return app

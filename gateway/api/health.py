"""Liveness and readiness."""

from __future__ import annotations

import anyio
import numpy as np
from fastapi import APIRouter

from gateway.api.deps import DrainDep, MemesDep
from gateway.backends import ModelUnavailableError
from gateway.captioner import Captioner, ModelSession
from gateway.errors import ApiError

router = APIRouter(tags=["health"])

READINESS_TIMEOUT_SECONDS = 2.0
"""A load balancer's probe gets its answer within this, even if the model tier hangs."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def probe_model(session: ModelSession) -> Captioner:
    """Metadata once, then on every probe one single-beam `decode_step`: a cached answer would stay
    "ready" while the model tier is down."""
    captioner = session.captioner()
    contract = captioner.info.contract
    captioner.backend.decode_step(
        np.array([contract.start_id], np.int32),
        np.zeros((1, contract.state_size), np.float32),
        np.zeros((1, *contract.context_shape), np.float32),
        np.zeros(1, np.int32),
        1,
    )
    return captioner


def _not_ready(code: str, message: str) -> ApiError:
    return ApiError(503, code, message, {"Retry-After": "1"})


def probe_models(sessions: dict[str, ModelSession]) -> dict[str, Captioner]:
    """`probe_model` on every served model, in order."""
    return {name: probe_model(session) for name, session in sessions.items()}


@router.get("/readyz")
async def readyz(memes: MemesDep, drain: DrainDep) -> dict[str, str | int | dict[str, int]]:
    """Ready while the model tier answers a decode step of every served model and the gateway is not
    shutting down. `model` and `version` are the default model's; `models` lists each one's version."""
    if drain.draining:
        raise _not_ready("shutting_down", "this gateway is shutting down")
    captioners = None
    try:
        with anyio.move_on_after(READINESS_TIMEOUT_SECONDS):
            captioners = await anyio.to_thread.run_sync(probe_models, memes.models.sessions, abandon_on_cancel=True)
    except ModelUnavailableError as error:
        raise _not_ready("model_unavailable", str(error)) from error
    except Exception as error:  # the probe itself was refused: not ready either, and say why
        raise _not_ready("model_unavailable", f"the model tier failed a probe: {error}") from error
    if captioners is None:
        raise _not_ready("model_unavailable", f"the model tier did not answer within {READINESS_TIMEOUT_SECONDS} s")
    default = captioners[memes.models.default].info
    versions = {name: captioner.info.version for name, captioner in captioners.items()}
    return {"status": "ready", "model": default.name, "version": default.version, "models": versions}

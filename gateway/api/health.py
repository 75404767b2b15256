"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from gateway.api.deps import SessionDep
from gateway.backends import ModelUnavailableError
from gateway.errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(session: SessionDep) -> dict[str, str | int]:
    """Ready once the model has answered its `metadata` call."""
    try:
        captioner = await run_in_threadpool(session.captioner)
    except ModelUnavailableError as error:
        raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error
    return {"status": "ready", "model": captioner.info.name, "version": captioner.info.version}

"""GET /v1/models: the models this gateway serves, to pick one per request."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.api.deps import MemesDep
from gateway.backends import ModelUnavailableError
from gateway.errors import ApiError

router = APIRouter(tags=["models"])


class ServedModelOut(BaseModel):
    name: str = Field(description="Pass as `model` (or the X-Memefly-Model header).")
    decoder: str = Field(description="`gru` or `transformer`; also accepted as `model`.")
    version: int
    default: bool = Field(description="What a request that names no model gets (unless a traffic split is set).")
    traffic: float | None = Field(None, description="Its weight in the A/B traffic split, when one is set.")
    explains: bool = Field(description="Whether it can show where it looked for each word (`explain`).")


@router.get("/v1/models", response_model=list[ServedModelOut])
def list_models(memes: MemesDep) -> list[ServedModelOut]:
    """Every served model, with its decoder and the version answering now."""
    models = memes.models
    served = []
    for name, session in models.sessions.items():
        try:
            info = session.captioner().info
        except ModelUnavailableError as error:
            raise ApiError(503, "model_unavailable", str(error), {"Retry-After": "1"}) from error
        served.append(
            ServedModelOut(
                name=name,
                decoder=info.contract.decoder,
                version=info.version,
                default=name == models.default,
                traffic=models.traffic.get(name) if models.traffic else None,
                explains=info.contract.explain is not None,
            )
        )
    return served

"""Optional API keys on the routes that make memes, and CORS, both from settings.

API keys guard only the two POST routes that cost model time (POST /v1/memes and
POST /v1/templates/{id}/memes). Every GET stays public: health, readiness and metrics for the load
balancer and Prometheus, the web page and the OpenAPI docs, the template catalogue, and permalinks,
which are meant to be shared.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader

from gateway.errors import ApiError

API_KEY_HEADER = "X-API-Key"
EXPOSED_HEADERS = ["Location", "Retry-After", "X-Memefly-Caption", "X-Memefly-Model-Version", "X-Memefly-RPCs"]

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Needed only when the gateway is run with MEMEFLY_API_KEYS.",
)


def key_is_valid(given: str, keys: list[str]) -> bool:
    """Constant time in the key's content, and every key is compared, so timing tells nothing."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    matches = [hmac.compare_digest(given_bytes, key.encode("utf-8")) for key in keys]
    return any(matches)


async def require_api_key(request: Request, given: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    keys = [key.get_secret_value() for key in request.app.state.settings.api_keys]
    if not keys:
        return
    challenge = {"WWW-Authenticate": "ApiKey"}
    if not given:
        raise ApiError(401, "missing_api_key", f"send your API key in the {API_KEY_HEADER} header", challenge)
    if not key_is_valid(given, keys):
        raise ApiError(401, "invalid_api_key", "the API key is not valid", challenge)


ApiKeyRequired = Depends(require_api_key)


def install_cors(app: FastAPI, allow_origins: list[str]) -> None:
    """No CORS headers at all (browsers refuse cross-origin calls) unless origins are configured."""
    if not allow_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=allow_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "Accept", API_KEY_HEADER],
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=600,
    )

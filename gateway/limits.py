"""A cap on request bodies, enforced while they arrive, so no body is ever read whole before it is judged."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response


class RequestTooLarge(HTTPException):
    """Raised from `receive` once the body passes the cap; an HTTPException, so every layer that parses
    bodies (FastAPI, multipart) lets it through to the JSON error handler."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds {max_bytes} bytes", {"Connection": "close"})


def max_body_bytes(max_upload_bytes: int) -> int:
    """An upload of `max_upload_bytes` fits, base64-encoded in JSON (4/3 larger) or in a multipart form."""
    return max_upload_bytes * 4 // 3 + 64 * 1024


class BodySizeLimitMiddleware:
    """413 at once for a Content-Length over the cap; a chunked body is counted and cut off at the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await error_response(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                response = error_response(
                    413,
                    "request_too_large",
                    f"the request body exceeds {self.max_bytes} bytes",
                    {"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

"""A small threaded HTTP/1.1 server (stdlib ``http.server``) for the REST and SageMaker front ends.

The standard library rather than Starlette/uvicorn: TF Serving's REST API is one path-regex
dispatcher whose bodies and status codes must be byte-exact, so a framework's routing, validation
and error pages would only be bypassed; and each request blocks on TensorFlow (or in a batching
queue), which suits a thread per connection better than an event loop run in a side thread.
``max_concurrent`` bounds the requests being executed, like ``--rest_api_num_threads``, without
letting idle keep-alive connections hold a slot.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IDLE_CONNECTION_SECONDS = 60

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # as sent, query string included
    headers: Message
    body: bytes


Handler = Callable[[HttpRequest], HttpResponse]


class HttpServer:
    """Serves ``handler`` on ``0.0.0.0:port`` from a background thread; ``port=0`` picks a free one."""

    def __init__(self, port: int, handler: Handler, name: str, max_concurrent: int = 64) -> None:
        slots = threading.BoundedSemaphore(max_concurrent)

        class RequestHandler(_RequestHandler):
            def respond(self, request: HttpRequest) -> HttpResponse:
                with slots:
                    return handler(request)

        self._server = ThreadingHTTPServer(("0.0.0.0", port), RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{name}-http", daemon=True)
        self.name = name

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 and httpx clients expect
    timeout = IDLE_CONNECTION_SECONDS

    def respond(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    def send_response(self, code: int, message: str | None = None) -> None:
        # No Server header: tensorflow_model_server (libevent) sends none.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Bad request body")
            return
        try:
            response = self.respond(HttpRequest(self.command, self.path, self.headers, body))
        except Exception as exc:  # a bug in a handler still owes the client an answer
            log.exception("%s %s failed", self.command, self.path)
            response = HttpResponse(500, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

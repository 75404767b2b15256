"""Prometheus metrics, in a registry of the app's own (so several apps in one process never clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "memefly_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "memefly_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.memes = Counter(
            "memefly_memes_generated",
            "Memes generated, by backend and model.",
            ["backend", "model"],
            registry=self.registry,
        )
        self.model_calls_per_meme = Histogram(
            "memefly_model_rpcs_per_meme",
            "Model-tier calls one meme took part in.",
            registry=self.registry,
            buckets=(1, 2, 5, 10, 15, 20, 25, 30, 40, 65),
        )
        self.decode_batch = Histogram(
            "memefly_decode_batch_beams",
            "Beams carried by one decode_step call (all requests together).",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.backend_errors = Counter(
            "memefly_backend_errors", "Failed calls to the model tier by kind.", ["kind"], registry=self.registry
        )


class MetricsMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(request.method, path, str(status)).inc()
            self.metrics.latency.labels(request.method, path).observe(time.perf_counter() - started)

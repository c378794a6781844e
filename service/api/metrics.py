"""Prometheus metrics (`GET /metrics`, via prometheus-client): HTTP requests, latency, in-flight, model runs.

Each app has its own registry, so tests and several apps in one process do not share counters. Several uvicorn
workers write theirs to the folder `PROMETHEUS_MULTIPROC_DIR` names (prometheus-client's multiprocess mode, which
`python -m service` turns on for more than one worker), and whichever worker a scrape reaches answers for all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.routing import Match
from starlette.types import ASGIApp, Scope

from service.api.middleware import RequestObserver

#: Request latency buckets, seconds: from a health check (1 ms) to a 12-megapixel photo edit (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Model-run buckets, seconds: one 64x64 face (about 1 ms) to a batch of 16 (tens of ms).
RUN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: The endpoint label of requests no route matched (so unknown paths cannot grow the label set).
UNMATCHED = "unmatched"
#: The folder where several worker processes' metrics meet; prometheus-client reads it when first imported.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class Metrics:
    """The service's metrics, in a registry of their own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum", registry=self.registry
        )
        self.rejected = Counter(
            "http_requests_rejected_total",
            "Requests refused by the admission limit (busy: 503), past their deadline (deadline: 504) or left by their "
            "client while waiting for a slot (gone: 499)",
            ["reason"],
            registry=self.registry,
        )
        self.model_runs = Histogram(
            "facevae_model_run_seconds",
            "onnxruntime session.run time per call",
            ["network"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "facevae_model_batch_size",
            "Faces or latents per session.run call",
            ["network"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def reject(self, reason: str) -> None:
        """One request refused by `service.api.admission` (its `on_reject`)."""
        self.rejected.labels(reason).inc()

    def observe_run(self, network: str, batch: int, seconds: float) -> None:
        """One encoder or decoder run (FaceModel's `run_observer`)."""
        self.model_runs.labels(network).observe(seconds)
        self.batch_sizes.labels(network).observe(batch)

    def exposition(self) -> Response:
        return Response(generate_latest(self._scraped()), media_type=CONTENT_TYPE_LATEST)

    def _scraped(self) -> CollectorRegistry:
        """This app's registry, or with several workers all workers' metrics from their shared folder."""
        if MULTIPROCESS_DIR not in os.environ:
            return self.registry
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)
        return every_worker

    def close(self) -> None:
        """This process serves no more: with several workers, its in-flight gauge leaves the sum."""
        if MULTIPROCESS_DIR in os.environ:
            multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware(RequestObserver):
    """Counts every HTTP request by method, route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    def begin(self, scope: Scope) -> None:
        self.metrics.in_flight.inc()

    def end(self, scope: Scope, status: int, seconds: float) -> None:
        self.metrics.in_flight.dec()
        endpoint = getattr(scope.get("route"), "path", None) or _route_template(scope)
        self.metrics.requests.labels(scope["method"], endpoint, str(status)).inc()
        self.metrics.latency.labels(scope["method"], endpoint).observe(seconds)


def _route_template(scope: Scope) -> str:
    """The template of the route a request would have reached: for requests answered before routing (503 busy, 413,
    408, 499), which would otherwise all count as `UNMATCHED`."""
    return _match(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope) or UNMATCHED


def _match(routes: Iterable[Any], scope: Scope) -> str | None:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router wrapper (no prefixes here)
        if included is not None:
            found = _match(included.routes, scope)
        elif route.matches(scope)[0] is not Match.NONE:
            found = getattr(route, "path", None)
        else:
            found = None
        if found:
            return found
    return None


def add_metrics(app: FastAPI, metrics: Metrics) -> None:
    """`GET /metrics` and the middleware that feeds it (around everything added before it)."""
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def exposition() -> Response:
        return metrics.exposition()

"""HTTP tracing, metrics and access log for the API: spans named by route template, and ``GET /metrics``.

Metrics and the access log wrap the whole application (inside the request's
span), so requests refused by the auth middleware and requests for unknown
routes are counted and logged with the status they really got.
"""

from __future__ import annotations

import re
import time
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.plugins.opentelemetry import OpenTelemetryPlugin as LitestarOpenTelemetryPlugin
from litestar.plugins.opentelemetry.middleware import OpenTelemetryInstrumentationMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import Span
from prometheus_client import REGISTRY as HTTP_REGISTRY
from prometheus_client import Counter, Gauge, Histogram, generate_latest

from jobs import metrics
from jobs.queue import QueueRedis, queue_snapshot
from jobs.settings import Settings
from service.access_log import log_request

# Probes, scrapes and the API docs are not traced or counted: they would drown the requests that matter.
_UNOBSERVED = ["^/health/", "^/metrics", "^/schema"]
_UNCOUNTED = ("/health/", "/metrics", "/schema")
_TYPED_PARAM = re.compile(r"\{(\w+):\w+\}")
_APP = "agentfarm"
UNMATCHED = "unmatched"  # the path label of requests no route matched (one series, not one per path tried)
_LABELS = ("method", "path", "status_code", "app_name")

HTTP_REQUESTS = Counter("agentfarm_http_requests_total", "Total requests", _LABELS)
HTTP_ERRORS = Counter("agentfarm_http_requests_error_total", "Total errors in requests (5xx)", _LABELS)
HTTP_DURATION = Histogram("agentfarm_http_request_duration_seconds", "Request duration, in seconds", _LABELS)
HTTP_IN_PROGRESS = Gauge(
    "agentfarm_http_requests_in_progress", "Requests currently in progress", ("method", "app_name")
)


def route_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """``GET /v1/tasks/{task_id}``, not the raw path: one span name per route, not per task."""
    template = _TYPED_PARAM.sub(r"{\1}", str(scope.get("path_template") or scope.get("path", "")))
    method = str(scope.get("method", "")).strip()
    name = f"{method} {template}" if method else template
    return name, {HTTP_ROUTE: template}


def route_label(scope: Scope) -> str:
    """The route template a request matched (``/v1/tasks/{task_id}``), or ``unmatched``."""
    template = scope.get("path_template")
    return _TYPED_PARAM.sub(r"{\1}", str(template)) if template else UNMATCHED


def observe_http(app: ASGIApp) -> ASGIApp:
    """Count, time and log every HTTP request with the status it was answered with."""

    async def observed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500
        method = str(scope.get("method", ""))
        counted = not str(scope.get("path", "")).startswith(_UNCOUNTED)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        if counted:
            HTTP_IN_PROGRESS.labels(method, _APP).inc()
        try:
            await app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - started
            if counted:
                HTTP_IN_PROGRESS.labels(method, _APP).dec()
                labels = (method, route_label(scope), str(status), _APP)
                HTTP_REQUESTS.labels(*labels).inc()
                HTTP_DURATION.labels(*labels).observe(duration)
                if status >= 500:
                    HTTP_ERRORS.labels(*labels).inc()
            log_request(scope, status, duration)

    return observed


class _ObservedTelemetryMiddleware(OpenTelemetryInstrumentationMiddleware):
    """Litestar's app-wide OpenTelemetry middleware around ``observe_http``(the app)."""

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        super().__init__(app=observe_http(app), config=config)


class OpenTelemetryPlugin(LitestarOpenTelemetryPlugin):
    """Litestar's OpenTelemetry plugin, whose app-wide middleware also counts and logs every request.

    It keeps the class name: Litestar looks the plugin up by that name to install its middleware.
    """

    @property
    def middleware(self) -> DefineMiddleware:
        return DefineMiddleware(_ObservedTelemetryMiddleware, config=self.config)


def _without_query(span: Span, _scope: dict[str, Any]) -> None:
    """Server spans record the URL without its query string: a client may have put a credential
    there (``?api_key=...``), and the instrumentation copies the full URL into ``http.url``."""
    attributes = getattr(span, "attributes", None) or {}
    for name in ("http.url", "url.full"):
        url = attributes.get(name)
        if isinstance(url, str) and "?" in url:
            span.set_attribute(name, url.split("?", 1)[0])
    if attributes.get("url.query"):
        span.set_attribute("url.query", "")


def tracing_plugin() -> OpenTelemetryPlugin:
    """Tracing, metrics and the access log of every HTTP request, around the whole application."""
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            exclude=_UNOBSERVED,
            exclude_spans=["receive", "send"],
            scope_span_details_extractor=route_span_details,
            server_request_hook_handler=_without_query,
        )
    )


# Litestar adds "; charset=utf-8" to text/* types itself; the exposition type already ends with it.
_EXPOSITION = metrics.CONTENT_TYPE.replace("; charset=utf-8", "")


class MetricsController(Controller):
    path = "/metrics"
    include_in_schema = False

    @get("/", media_type=_EXPOSITION, cache=False)
    async def scrape(self, queue: NamedDependency[QueueRedis], settings: NamedDependency[Settings]) -> Response[bytes]:
        """Prometheus exposition: HTTP requests, tasks submitted here, and queue depth and live workers from Redis."""

        async def snapshot() -> dict[str, tuple[int, int]]:
            return await queue_snapshot(queue, settings.worker.heartbeat_s)

        body = generate_latest(HTTP_REGISTRY) + await metrics.render_metrics(metrics.REGISTRY, snapshot)
        return Response(body, media_type=_EXPOSITION)

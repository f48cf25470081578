"""HTTP tracing and metrics for the API: spans named by route template, and ``GET /metrics``."""

from __future__ import annotations

import re
from typing import Any

from arq.connections import ArqRedis
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import Scope
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from prometheus_client import REGISTRY as HTTP_REGISTRY
from prometheus_client import generate_latest

from jobs import metrics
from jobs.queue import queue_snapshot
from jobs.settings import Settings

# Probes and scrapes are not traced or counted: they would drown the requests that matter.
_UNOBSERVED = ["^/health/", "^/metrics", "^/schema"]
_TYPED_PARAM = re.compile(r"\{(\w+):\w+\}")


def route_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """``GET /v1/tasks/{task_id}``, not the raw path: one span name per route, not per task."""
    template = _TYPED_PARAM.sub(r"{\1}", str(scope.get("path_template") or scope.get("path", "")))
    method = str(scope.get("method", "")).strip()
    name = f"{method} {template}" if method else template
    return name, {HTTP_ROUTE: template}


def tracing_plugin() -> OpenTelemetryPlugin:
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            exclude=_UNOBSERVED, exclude_spans=["receive", "send"], scope_span_details_extractor=route_span_details
        )
    )


def request_metrics() -> PrometheusConfig:
    return PrometheusConfig(app_name="agentfarm", prefix="agentfarm_http", group_path=True, exclude=_UNOBSERVED)


class MetricsController(Controller):
    path = "/metrics"
    include_in_schema = False

    @get("/", media_type=metrics.CONTENT_TYPE, cache=False)
    async def scrape(self, queue: NamedDependency[ArqRedis], settings: NamedDependency[Settings]) -> Response[bytes]:
        """Prometheus exposition: HTTP requests, tasks submitted here, and queue depth and live workers from Redis."""

        async def snapshot() -> dict[str, tuple[int, int]]:
            return await queue_snapshot(queue, settings.worker_heartbeat_s)

        body = generate_latest(HTTP_REGISTRY) + await metrics.render_metrics(metrics.REGISTRY, snapshot)
        return Response(body, media_type=metrics.CONTENT_TYPE)

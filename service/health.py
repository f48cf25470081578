"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Literal

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from redis.exceptions import RedisError

from jobs.queue import QueueRedis, queue_snapshot
from jobs.settings import Settings
from service.schemas import Liveness, QueueHealth, Readiness


class HealthController(Controller):
    path = "/health"
    tags = ("health",)
    security = ({},)  # probes need no API key

    @get("/live", summary="Liveness", cache=False)
    async def live(self) -> Liveness:
        """The process is up and serving."""
        return Liveness()

    @get(
        "/ready",
        summary="Readiness",
        cache=False,
        responses={503: ResponseSpec(data_container=Readiness, description="Redis is unreachable.")},
    )
    async def ready(
        self, queue: NamedDependency[QueueRedis], settings: NamedDependency[Settings]
    ) -> Response[Readiness]:
        """Redis is reachable (else 503); live workers and depth per queue ("degraded" when a queue has none)."""
        try:
            await queue.ping()
            snapshot = await queue_snapshot(queue, settings.worker.heartbeat_s)
            queues = {q: QueueHealth(depth=depth, live_workers=live) for q, (depth, live) in snapshot.items()}
        except (RedisError, OSError):
            return Response(Readiness(status="unavailable", redis="unreachable"), status_code=503)
        status: Literal["ready", "degraded"] = "ready" if all(h.live_workers for h in queues.values()) else "degraded"
        return Response(Readiness(status=status, redis="ok", queues=queues), status_code=200)

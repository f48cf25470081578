"""``GET /v1/tasks/{id}/webhooks``: every delivery of the task's webhook and each attempt, as recorded."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from jobs.store import TaskStore
from jobs.webhooks import Delivery, deliveries
from service.auth import Caller
from service.openapi import error_responses
from service.tasks import owned_task

Store = NamedDependency[TaskStore]


class WebhookLog(msgspec.Struct, frozen=True, kw_only=True):
    """The task's webhook URL and its deliveries, oldest first (one per terminal event)."""

    url: str | None
    deliveries: list[Delivery]


class WebhooksController(Controller):
    path = "/v1/tasks"
    tags = ("tasks",)

    @get(
        "/{task_id:str}/webhooks",
        summary="List a task's webhook deliveries",
        responses=error_responses(400, 401, 404, 503),
    )
    async def task_webhooks(
        self, request: Request[Caller, Any, Any], task_id: FromPath[str], store: Store
    ) -> WebhookLog:
        """Each delivery (`pending`, `delivered` or `failed`) with every attempt: time, status or error, duration."""
        task = await owned_task(store, task_id, request.user.tenant)
        return WebhookLog(url=task.webhook_url, deliveries=await deliveries(store.redis, task_id))

"""Operator endpoints: the dead-letter list. They take an operator key (AGENTFARM_ADMIN_KEYS), not a tenant key."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, QueryParameter
from litestar.status_codes import HTTP_200_OK

from jobs import dlq
from jobs.models import Task
from jobs.queue import QueueRedis
from jobs.settings import Settings
from jobs.store import TaskStore
from service.auth import bearer_token, is_operator
from service.errors import NotFound
from service.openapi import error_responses


def operator_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    settings: Settings = connection.app.state.settings
    presented = bearer_token(connection.headers.get("authorization", ""))
    if presented is None or not is_operator(settings.api.admin_keys, presented):
        raise NotAuthorizedException(
            "an operator key (AGENTFARM_ADMIN_KEYS) is required", headers={"WWW-Authenticate": "Bearer"}
        )


class AdminController(Controller):
    path = "/v1/admin"
    tags = ("operators",)
    guards = (operator_guard,)

    @get("/dead-letters", summary="List dead-lettered tasks", responses=error_responses(400, 401, 503))
    async def dead_letters(
        self,
        request: Request[Any, Any, Any],
        queue: NamedDependency[QueueRedis],
        store: NamedDependency[TaskStore],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[Task]:
        """Failed tasks of every tenant, most recent failure first."""
        return await dlq.entries(queue, store, limit)

    @post(
        "/dead-letters/{task_id:str}/requeue",
        summary="Re-queue a dead-lettered task",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 503),
    )
    async def requeue(
        self, task_id: FromPath[str], queue: NamedDependency[QueueRedis], store: NamedDependency[TaskStore]
    ) -> Task:
        """Give a failed task a fresh start (attempts reset) on its queue."""
        try:
            return await dlq.requeue(queue, store, task_id)
        except dlq.NotDeadLettered:
            raise NotFound(f"task {task_id!r} is not in the dead-letter list") from None

"""The v1 task endpoints: submit each kind, read, list, and fetch the report."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
import structlog
from arq.connections import ArqRedis
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from crews.params import AnyParams, InvestmentParams, ResearchParams, SwotParams, TechnicalReviewParams
from crews.registry import Kind
from jobs.models import Status, Task, TaskError, utcnow
from jobs.queue import enqueue
from jobs.settings import Settings
from jobs.store import InvalidCursor, TaskStore
from service.errors import Conflict, DependencyDown, InvalidInput, NotFound
from service.openapi import error_responses
from service.schemas import TaskPage

log = structlog.get_logger(__name__)

Store = NamedDependency[TaskStore]
Queue = NamedDependency[ArqRedis]
Config = NamedDependency[Settings]

_LOCATION = ResponseHeader(name="Location", description="URL of the new task.", documentation_only=True)


def _submit_route(path: str, summary: str) -> post:
    return post(
        path,
        summary=summary,
        status_code=HTTP_202_ACCEPTED,
        response_headers=[_LOCATION],
        responses=error_responses(400, 401, 413, 503),
    )


class TaskController(Controller):
    path = "/v1/tasks"
    tags = ("tasks",)

    @_submit_route("/research", "Submit a research task")
    async def submit_research(
        self,
        request: Request[str, Any, Any],
        data: JSONBody[ResearchParams],
        store: Store,
        queue: Queue,
        settings: Config,
    ) -> Response[Task]:
        """Research a topic with a crew of the chosen type, depth and language."""
        return await _submit("research", data, request.user, store, queue, settings)

    @_submit_route("/swot", "Submit a SWOT analysis")
    async def submit_swot(
        self, request: Request[str, Any, Any], data: JSONBody[SwotParams], store: Store, queue: Queue, settings: Config
    ) -> Response[Task]:
        """Strengths, weaknesses, opportunities and threats of a company."""
        return await _submit("swot", data, request.user, store, queue, settings)

    @_submit_route("/investment", "Submit an investment analysis")
    async def submit_investment(
        self,
        request: Request[str, Any, Any],
        data: JSONBody[InvestmentParams],
        store: Store,
        queue: Queue,
        settings: Config,
    ) -> Response[Task]:
        """A company judged as an investment over a horizon."""
        return await _submit("investment", data, request.user, store, queue, settings)

    @_submit_route("/technical-review", "Submit a technical review")
    async def submit_technical_review(
        self,
        request: Request[str, Any, Any],
        data: JSONBody[TechnicalReviewParams],
        store: Store,
        queue: Queue,
        settings: Config,
    ) -> Response[Task]:
        """A review of a system, design or piece of code, with optional context."""
        return await _submit("technical_review", data, request.user, store, queue, settings)

    @get("/{task_id:str}", summary="Get a task", responses=error_responses(401, 404, 503))
    async def get_task(self, request: Request[str, Any, Any], task_id: FromPath[str], store: Store) -> Task:
        """The task's current state, progress, result and usage."""
        return await _owned(store, task_id, request.user)

    @get("/", summary="List tasks", responses=error_responses(400, 401, 503))
    async def list_tasks(
        self,
        request: Request[str, Any, Any],
        store: Store,
        status: Annotated[Status | None, QueryParameter(description="Only tasks in this status.")] = None,
        kind: Annotated[Kind | None, QueryParameter(description="Only tasks of this kind.")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="Page size.")] = 20,
        cursor: Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page.")] = None,
    ) -> TaskPage:
        """The caller's tasks, newest first, optionally filtered by status and kind."""
        try:
            page = await store.list(request.user, limit=limit, cursor=cursor, status=status, kind=kind)
        except InvalidCursor:
            raise InvalidInput("cursor: not a cursor this API returned; start again without it") from None
        return TaskPage(items=page.items, next_cursor=page.next_cursor)

    @get(
        "/{task_id:str}/report",
        summary="Get a task's report",
        media_type="text/markdown",
        responses={
            **error_responses(401, 404, 409, 503),
        },
        response_description="The report as markdown, or as JSON (`Report`) with `Accept: application/json`.",
    )
    async def get_report(self, request: Request[str, Any, Any], task_id: FromPath[str], store: Store) -> Response[Any]:
        """The finished report: markdown by default, the structured report with `Accept: application/json`."""
        task = await _owned(store, task_id, request.user)
        if task.result is None:
            raise Conflict(f"task {task.id} is {task.status}; its report exists once it is completed")
        if (
            request.accept.best_match(["text/markdown", "application/json"], default="text/markdown")
            == "application/json"
        ):
            return Response(task.result, media_type="application/json")
        return Response(task.result.markdown, media_type="text/markdown; charset=utf-8")


async def _owned(store: TaskStore, task_id: str, tenant: str) -> Task:
    task = await store.get_for(task_id, tenant) if _is_uuid(task_id) else None
    if task is None:
        raise NotFound(f"no task {task_id!r} for this API key")
    return task


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _submit(
    kind: Kind, params: AnyParams, tenant: str, store: TaskStore, queue: ArqRedis, settings: Settings
) -> Response[Task]:
    now = utcnow()
    task = Task(
        id=str(uuid.uuid4()),
        kind=kind,
        tenant=tenant,
        params=msgspec.structs.asdict(params),
        max_attempts=settings.policy(kind).max_attempts,
        created_at=now,
        updated_at=now,
    )
    await store.create(task)
    try:
        await enqueue(queue, task)
    except Exception as exc:
        # Never leave a task that claims to be queued but is not.
        await store.update(task.id, lambda t: t.to("failed", error=_ENQUEUE_FAILED))
        raise DependencyDown("the task could not be queued; it was marked failed, submit it again") from exc
    log.info("task_submitted", task_id=task.id, kind=kind, tenant=tenant)
    return Response(task, status_code=HTTP_202_ACCEPTED, headers={"Location": f"/v1/tasks/{task.id}"})


_ENQUEUE_FAILED = TaskError(type="enqueue_failed", message="the queue did not accept the task; submit it again")

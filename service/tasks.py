"""The v1 task endpoints: submit each kind, read, list, cancel, and fetch the report."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import structlog
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from crews.params import Params
from jobs import metrics
from jobs.kinds import KINDS, Kind, KindName
from jobs.models import AlreadyFinished, Status, Task
from jobs.store import InvalidCursor, TaskStore
from service import reports
from service.auth import Caller
from service.errors import Conflict, InvalidInput, NotFound
from service.openapi import ReportOperation, error_responses
from service.schemas import FieldProblem, TaskPage, TaskSummary, TaskView
from service.submit import Submitter

log = structlog.get_logger(__name__)

Store = NamedDependency[TaskStore]
Tasks = NamedDependency[Submitter]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="Send the same key again (same body) to get the same task back instead of a second one.",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",  # printable ASCII
    ),
]
Req = Request[Caller, Any, Any]

# ``value`` is only an example here (the handler sets the header); it gives the header its schema (a string),
# which OpenAPI 3.1 requires of every header.
_LOCATION = ResponseHeader(
    name="Location", description="URL of the task.", documentation_only=True, value="/v1/tasks/{task_id}"
)


def submit_route(kind: Kind) -> HTTPRouteHandler:
    """``POST /v1/tasks/{kind.path}``: the body is the kind's input struct, validated before the handler runs."""

    async def submit(
        request: Req, data: Any, tasks: Tasks, idempotency_key: IdempotencyKey = None
    ) -> Response[TaskView]:
        return await _submit(kind.name, data, request.user, tasks, idempotency_key)

    submit.__name__ = submit.__qualname__ = f"submit_{kind.name}"
    json_body: Any = JSONBody  # the body's type is this row's input struct, known only at run time
    submit.__annotations__["data"] = json_body[kind.params]
    submit.__doc__ = kind.params.__doc__
    return post(
        f"/v1/tasks/{kind.path}",
        summary=kind.summary,
        tags=["tasks"],
        status_code=HTTP_202_ACCEPTED,
        response_headers=[_LOCATION],
        responses=error_responses(400, 401, 409, 413, 415, 422, 429, 503),
    )(submit)


def submit_routes() -> list[HTTPRouteHandler]:
    """One submit route per row of the kinds table."""
    return [submit_route(kind) for kind in KINDS.values()]


class TaskController(Controller):
    path = "/v1/tasks"
    tags = ("tasks",)

    @get("/{task_id:str}", summary="Get a task", responses=error_responses(400, 401, 404, 503))
    async def get_task(self, request: Req, task_id: FromPath[str], store: Store) -> TaskView:
        """The task's current state, progress, result and usage."""
        return TaskView.of(await owned_task(store, task_id, request.user.tenant))

    @get("/", summary="List tasks", responses=error_responses(400, 401, 503))
    async def list_tasks(
        self,
        request: Req,
        store: Store,
        status: Annotated[Status | None, QueryParameter(description="Only tasks in this status.")] = None,
        kind: Annotated[KindName | None, QueryParameter(description="Only tasks of this kind.")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="Page size.")] = 20,
        cursor: Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page.")] = None,
    ) -> TaskPage:
        """The caller's tasks, newest first, optionally filtered by status and kind."""
        try:
            page = await store.list(request.user.tenant, limit=limit, cursor=cursor, status=status, kind=kind)
        except InvalidCursor:
            message = "not a cursor this API returned; start again without it"
            raise InvalidInput(
                f"cursor: {message}", errors=[FieldProblem(field="cursor", message=message, source="query")]
            ) from None
        return TaskPage(items=[TaskSummary.of(t) for t in page.items], next_cursor=page.next_cursor)

    @post(
        "/{task_id:str}/cancel",
        summary="Cancel a task",
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 404, 409, 503),
    )
    async def cancel_task(self, request: Req, task_id: FromPath[str], store: Store) -> TaskView:
        """Cancel a queued, retrying or running task; a running crew makes no further LLM calls."""
        await owned_task(store, task_id, request.user.tenant)
        try:
            task = await store.cancel(task_id)
        except AlreadyFinished as finished:
            raise Conflict(f"task {task_id} already finished as {finished.status}; it cannot be cancelled") from None
        if task is None:
            raise NotFound(f"no task {task_id!r} for this API key")
        metrics.TASKS_FINISHED.labels(kind=task.kind, status="cancelled").inc()
        log.info("task_cancelled", task_id=task_id, tenant=task.tenant)
        return TaskView.of(task)

    @get(
        "/{task_id:str}/report",
        summary="Get a task's report",
        media_type="text/markdown",
        responses=error_responses(400, 401, 404, 406, 409, 500, 503),
        response_description=(
            "The report as Markdown (default), the structured `Report` as JSON, a standalone HTML page or an A4 PDF,"
            " chosen by `Accept` or `?format=`."
        ),
        operation_class=ReportOperation,
    )
    async def get_report(
        self,
        request: Req,
        task_id: FromPath[str],
        store: Store,
        format: Annotated[  # noqa: A002 - the query parameter's public name
            str | None,
            QueryParameter(description="`md`, `json`, `html` or `pdf`; overrides `Accept`. Any other value gets 406."),
        ] = None,
    ) -> Response[Any]:
        """The finished report as Markdown, JSON, HTML or PDF (`Accept` or `?format=`); 409 until it is completed."""
        task = await owned_task(store, task_id, request.user.tenant)
        wanted = reports.negotiate(request, format)
        if task.result is None:
            raise reports.not_ready(task)
        exported = await reports.export(task, task.result, wanted)
        return Response(exported.body, media_type=exported.media_type, headers=exported.headers)


async def owned_task(store: TaskStore, task_id: str, tenant: str) -> Task:
    """The caller's task, or 404 (another tenant's task looks the same as a missing one)."""
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
    kind: str, params: Params, caller: Caller, tasks: Submitter, idempotency_key: str | None
) -> Response[TaskView]:
    submitted = await tasks.submit(kind, params, caller, idempotency_key)
    headers = {"Location": f"/v1/tasks/{submitted.task.id}"}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(TaskView.of(submitted.task), status_code=HTTP_202_ACCEPTED, headers=headers)

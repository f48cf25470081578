"""Wire bodies of the API that are not task state or job input."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from crews.results import Report, Usage
from jobs.kinds import KindName
from jobs.models import Status, Task, TaskError


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid part of a request: where it is and what is wrong with it."""

    field: str | None
    message: str
    source: str | None = None


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error response (RFC 9457 problem details)."""

    title: str
    status: int
    detail: str
    type: str = "about:blank"
    errors: list[FieldProblem] | None = None


class TaskSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A task in a list: its state without the report body (``title`` names the report once completed)."""

    id: str
    kind: KindName
    status: Status
    progress: int
    stage: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error: TaskError | None
    usage: Usage
    trace_id: str | None
    title: str | None = None

    @classmethod
    def of(cls, task: Task) -> TaskSummary:
        fields = {name: getattr(task, name) for name in cls.__struct_fields__ if name != "title"}
        return cls(**fields, title=task.result.title if task.result else None)


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """A task as its owner sees it: state, progress, result and usage; no internal bookkeeping."""

    id: str
    kind: KindName
    status: Status
    progress: int
    stage: str
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    result: Report | None
    error: TaskError | None
    usage: Usage
    trace_id: str | None

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(**{name: getattr(task, name) for name in cls.__struct_fields__})


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of tasks, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[TaskSummary]
    next_cursor: str | None


class QueueHealth(msgspec.Struct, frozen=True, kw_only=True):
    live_workers: int
    depth: int


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ready", "degraded", "unavailable"]
    redis: Literal["ok", "unreachable"]
    queues: dict[str, QueueHealth] = msgspec.field(default_factory=dict)


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["ok"] = "ok"

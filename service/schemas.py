"""Wire bodies of the API that are not task state or job input (the task views are in ``jobs/views.py``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from jobs.views import TaskState, TaskSummary, TaskView

__all__ = [
    "FieldProblem",
    "Liveness",
    "Problem",
    "QueueHealth",
    "Readiness",
    "TaskPage",
    "TaskState",
    "TaskSummary",
    "TaskView",
]


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

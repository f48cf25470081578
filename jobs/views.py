"""The public views of a task: what its owner sees over the API and in webhook deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from crews.results import Report, Usage
from jobs.kinds import KindName
from jobs.models import Reason, Status, Task, TaskError


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """A task's state as its owner sees it; no internal bookkeeping (tokens, workers, job ids)."""

    id: str
    kind: KindName
    status: Status
    reason: Reason
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
    usage: Usage  # the current (or last) attempt's
    usage_total: Usage  # every attempt's together
    max_tokens: int  # the token budget (prompt + completion, all attempts); 0: none
    trace_id: str | None
    webhook_url: str | None = None

    @classmethod
    def _fields_of(cls, task: Task) -> dict[str, Any]:
        return {name: getattr(task, name) for name in TaskState.__struct_fields__}


class TaskSummary(TaskState, frozen=True, kw_only=True):
    """A task in a list: its state without the report body (``title`` names the report once completed)."""

    title: str | None = None

    @classmethod
    def of(cls, task: Task) -> TaskSummary:
        return cls(**cls._fields_of(task), title=task.result.title if task.result else None)


class TaskView(TaskState, frozen=True, kw_only=True):
    """A task with its result: state, progress, the report and usage."""

    result: Report | None = None

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(**cls._fields_of(task), result=task.result)

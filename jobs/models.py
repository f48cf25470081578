"""Task state as stored in Redis and returned by the API, and its one set of transitions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from crews.results import Report, Usage
from jobs.kinds import KindName as Kind

Status = Literal["queued", "running", "retrying", "completed", "failed", "cancelled"]
TERMINAL: frozenset[Status] = frozenset({"completed", "failed", "cancelled"})
# Where an execution may still record the usage of calls that completed after it was stopped:
# while it runs, and after it ended cancelled (by the API) or failed (timed out).
USAGE_WRITABLE: frozenset[Status] = frozenset({"running", "cancelled", "failed"})

# Why a task's status changed: a stable code, stored with the task and carried by its events.
Reason = Literal[
    "submitted",  # accepted by the API
    "started",  # taken by an execution
    "taken_over",  # still marked running after its lease lapsed: a new execution takes it in place
    "completed",
    "error",  # the crew failed: permanent, or transient with no attempts left
    "timeout",  # the kind's time limit
    "budget_exceeded",  # the next LLM call would have spent more tokens than the task's budget
    "attempts_exhausted",  # started max_attempts times without finishing (its workers kept dying)
    "enqueue_failed",  # no longer set (a task and its job are stored in one MULTI); older stored tasks still decode
    "retry_scheduled",  # transient failure, attempts left: runs again after a backoff
    "lease_lapsed",  # its worker stopped responding: back on the queue for any worker
    "worker_shutdown",  # handed back by a worker shutting down
    "cancelled",  # by its owner
    "operator_requeue",  # a dead-lettered task given a fresh start
]

# The only moves a task's status may make, and for which reasons. Every change of
# status goes through ``Task.to``, which checks this table.
TRANSITIONS: dict[tuple[Status, Status], frozenset[Reason]] = {
    ("queued", "running"): frozenset({"started"}),
    ("retrying", "running"): frozenset({"started"}),
    ("running", "running"): frozenset({"taken_over"}),
    ("running", "completed"): frozenset({"completed"}),
    ("running", "failed"): frozenset({"error", "timeout", "budget_exceeded", "attempts_exhausted"}),
    ("queued", "failed"): frozenset({"attempts_exhausted"}),
    ("retrying", "failed"): frozenset({"attempts_exhausted"}),
    ("running", "retrying"): frozenset({"retry_scheduled"}),
    ("running", "queued"): frozenset({"lease_lapsed", "worker_shutdown"}),
    ("queued", "cancelled"): frozenset({"cancelled"}),
    ("running", "cancelled"): frozenset({"cancelled"}),
    ("retrying", "cancelled"): frozenset({"cancelled"}),
    ("failed", "queued"): frozenset({"operator_requeue"}),
}


class InvalidTransition(Exception):
    """A status change that the task's lifecycle does not allow (a bug or a race lost)."""


class AlreadyFinished(InvalidTransition):
    """The task reached a final status before this request to change it."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.id} already finished as {task.status}")
        self.status = task.status


class TaskError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a task failed: a stable type and a message a person can act on."""

    type: str
    message: str


def utcnow() -> datetime:
    return datetime.now(UTC)


class Task(msgspec.Struct, kw_only=True, frozen=True):
    """A job and everything known about it. Fields added later must have defaults."""

    id: str
    kind: Kind
    tenant: str
    status: Status = "queued"
    progress: int = 0
    stage: str = "queued"
    reason: Reason = "submitted"  # why the status last changed
    seq: int = 0  # number of the task's last event (jobs/events.py)
    params: dict[str, Any]
    attempt: int = 0
    max_attempts: int = 1
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Report | None = None
    error: TaskError | None = None
    usage: Usage = msgspec.field(default_factory=Usage)  # the current (or last) attempt's
    usage_before: Usage = msgspec.field(default_factory=Usage)  # every earlier attempt's, summed
    max_tokens: int = 0  # the token budget over all attempts (0: none)
    trace_id: str | None = None
    # Execution bookkeeping. run_token fences writes: only the execution holding the
    # current token may change a running task, so a superseded run can never
    # overwrite a newer one.
    run_token: int = 0
    worker_id: str | None = None
    job_id: str | None = None
    # W3C trace context of the request that created the task: the worker's spans continue its trace.
    traceparent: str | None = None
    # Where the finished task is POSTed (jobs/webhooks.py); not part of the crew's input.
    webhook_url: str | None = None

    @property
    def usage_total(self) -> Usage:
        """What every attempt of this task spent together: its bill, and what its budget counts."""
        return self.usage_before.plus(self.usage) if self.usage_before.llm_calls else self.usage

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to(self, status: Status, reason: Reason, **changes: Any) -> Task:
        """This task moved to ``status`` for ``reason`` with ``changes`` applied, if ``TRANSITIONS`` allows it."""
        if reason not in TRANSITIONS.get((self.status, status), frozenset()):
            raise InvalidTransition(f"task {self.id}: {self.status} -> {status} ({reason}) is not allowed")
        now = utcnow()
        if status in TERMINAL:
            changes.setdefault("finished_at", now)
        if status == "completed":
            changes.setdefault("progress", 100)
            changes.setdefault("stage", "completed")
        return msgspec.structs.replace(self, status=status, reason=reason, updated_at=now, **changes)

    def cancelled(self) -> Task:
        """This task cancelled by its owner; its crew stops at its next stop point (``TaskStore.cancel``)."""
        if self.finished:
            raise AlreadyFinished(self)
        return self.to("cancelled", "cancelled", stage="cancelled")

    def started(self, *, run_token: int, worker_id: str, job_id: str) -> Task:
        """This task taken by a new execution (which holds its lease), as attempt ``attempt + 1``.

        A task still marked running whose lease lapsed is taken over in place.
        """
        return self.to(
            "running",
            "taken_over" if self.status == "running" else "started",
            attempt=self.attempt + 1,
            run_token=run_token,
            worker_id=worker_id,
            job_id=job_id,
            progress=0,
            stage="starting",
            started_at=self.started_at or utcnow(),
            usage=Usage(),  # usage is the current run's: a result and the tokens that produced it
            usage_before=self.usage_total,
        )

    def requeued(self, job_id: str) -> Task:
        """An operator's second chance for a failed task: a fresh start with a new job."""
        return self.to(
            "queued",
            "operator_requeue",
            stage="re-queued by an operator",
            progress=0,
            attempt=0,
            error=None,
            result=None,
            finished_at=None,
            started_at=None,
            worker_id=None,
            job_id=job_id,
        )

    def with_usage(self, usage: Usage, *, run_token: int) -> Task:
        """This task with the usage so far of the execution holding ``run_token``; not a status change.

        Tokens spent are always recorded: also after the task ended cancelled or
        failed under that execution (a call in flight at the stop completes
        later). Never another execution's task, never a completed one, and never
        an older snapshot over a newer one.
        """
        if self.run_token != run_token or self.status not in USAGE_WRITABLE or not usage.newer_than(self.usage):
            return self
        return msgspec.structs.replace(self, usage=usage, updated_at=utcnow())

    def with_progress(self, progress: int, stage: str) -> Task:
        """Progress only moves forward within an attempt; a finished task does not move."""
        if self.status != "running":
            return self
        return msgspec.structs.replace(
            self, progress=max(self.progress, min(progress, 99)), stage=stage, updated_at=utcnow()
        )

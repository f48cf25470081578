"""How an execution ends: the fenced final write, backoff and retries, dead letters, the canonical log line.

Every write here is fenced (applied only while the task is running under the
execution's token), so a superseded, cancelled or timed-out run can never
overwrite a newer state. Usage is recorded also onto a task that ended
cancelled or failed under this execution, so tokens spent before a stop are
never lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from redis.exceptions import RedisError

from crews.control import BudgetExceeded, StopReason
from crews.failures import Failure, classify
from crews.results import Report, Usage, latest
from jobs import dlq, metrics
from jobs.models import Task, TaskError
from jobs.queue import RetryLater
from jobs.settings import KindPolicy
from jobs.worker.progress import ExecutionObserver
from jobs.worker.runtime import WorkerRuntime
from jobs.worker.stopping import Execution

log = structlog.get_logger(__name__)


def fenced(execution: Execution, change: Callable[[Task], Task]) -> Callable[[Task], Task]:
    """``change`` applied only while the task runs under this execution's token."""

    def guarded(task: Task) -> Task:
        if task.status != "running" or task.run_token != execution.token:
            return task
        return change(task)

    return guarded


async def settled(runtime: WorkerRuntime, execution: Execution, change: Callable[[Task], Task]) -> Task | None:
    """A fenced final write that outlasts a Redis blip (the task must not stay running by mistake)."""
    return await settled_write(runtime, execution.task_id, fenced(execution, change))


async def settled_write(runtime: WorkerRuntime, task_id: str, change: Callable[[Task], Task]) -> Task | None:
    """``TaskStore.update``, retried through a Redis blip for up to a minute; ``change`` does its own fencing."""
    delay = 0.2
    deadline = time.monotonic() + 60
    while True:
        try:
            return await runtime.store.update(task_id, change)
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                log.exception(
                    "final_state_not_written",
                    task_id=task_id,
                    consequence="the lease will lapse and the task will be re-queued",
                )
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the crew's run ended, as seen by the worker."""

    report: Report | None = None
    error: BaseException | None = None
    stopped: StopReason | None = None


def backoff_s(policy: KindPolicy, attempt: int, failure: Failure) -> float:
    """Exponential backoff with jitter, at least what the provider asked for (Retry-After)."""
    ceiling = policy.retry_backoff_s * 2 ** (attempt - 1)
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
    return max(delay, failure.retry_after_s or 0.0)


async def hand_back(runtime: WorkerRuntime, execution: Execution) -> None:
    handed = await settled(
        runtime,
        execution,
        lambda t: t.to(
            "queued", "worker_shutdown", stage="handed back: its worker shut down", attempt=max(0, t.attempt - 1)
        ),
    )
    if handed is not None and handed.status == "queued":
        log.info("task_handed_back", reason="worker shutting down")


async def settle(
    runtime: WorkerRuntime,
    execution: Execution,
    task: Task,
    outcome: Outcome,
    observer: ExecutionObserver,
    duration_s: float,
) -> None:
    policy = runtime.settings.policy(task.kind)

    def usage_of(current: Task) -> Usage:
        # Read at write time: the crew's thread may have reported a call since (the writer may be ahead).
        return latest(observer.usage, current.usage)

    def fields() -> dict[str, Any]:
        usage = observer.usage
        return {"duration_s": round(duration_s, 3), "llm_calls": usage.llm_calls, "model": usage.model}

    if outcome.report is not None:
        report = outcome.report
        done = await settled(
            runtime, execution, lambda t: t.to("completed", "completed", result=report, usage=usage_of(t))
        )
        if done is not None and done.status == "completed":
            metrics.task_finished(task.kind, "completed", duration_s)
            log.info("task_finished", status="completed", **fields())
        else:
            # Cancelled (or taken over) while the crew finished: the result is dropped, the tokens are not.
            await _stopped(runtime, execution, observer, "cancelled", fields)
        return
    if outcome.stopped is not None:
        reason = outcome.stopped
        if reason in ("soft_timeout", "timeout"):
            limit = policy.soft_timeout_s if reason == "soft_timeout" else policy.timeout_s
            error = TaskError(type="timeout", message=f"the crew did not finish within {limit:g} s ({reason})")
            await _fail(runtime, execution, error, "timeout", usage_of, task.kind, duration_s)
            log.warning("task_finished", status="failed", error_type="timeout", reason=reason, **fields())
        else:
            await _stopped(runtime, execution, observer, reason, fields)
        return
    assert outcome.error is not None
    if isinstance(outcome.error, BudgetExceeded):
        error = TaskError(type="budget_exceeded", message=str(outcome.error))
        await _fail(runtime, execution, error, "budget_exceeded", usage_of, task.kind, duration_s)
        log.warning("task_finished", status="failed", error_type=error.type, budget=outcome.error.budget, **fields())
        return
    failure = classify(outcome.error)
    metrics.LLM_ERRORS.labels(
        model=observer.usage.model or runtime.settings.llm.model_name, error_type=failure.type
    ).inc()
    trace.get_current_span().set_status(Status(StatusCode.ERROR, failure.type))
    error = TaskError(type=failure.type, message=failure.message)
    if failure.transient and task.attempt < task.max_attempts:
        delay = backoff_s(policy, task.attempt, failure)
        written = await settled(
            runtime,
            execution,
            lambda t: t.to(
                "retrying",
                "retry_scheduled",
                error=error,
                usage=usage_of(t),
                stage=f"retrying in {delay:.0f} s after {failure.type}",
            ),
        )
        log.warning(
            "task_retrying", error_type=failure.type, error=failure.message, retry_in_s=round(delay, 2), **fields()
        )
        if written is not None and written.status == "retrying":
            metrics.TASK_RETRIES.labels(kind=task.kind).inc()
            raise RetryLater(defer=delay)
        return
    if failure.transient:
        error = TaskError(type=failure.type, message=f"{failure.message} (gave up after {task.attempt} attempts)")
    await _fail(runtime, execution, error, "error", usage_of, task.kind, duration_s)
    log.warning("task_finished", status="failed", error_type=error.type, error=error.message, **fields())


async def _stopped(
    runtime: WorkerRuntime,
    execution: Execution,
    observer: ExecutionObserver,
    reason: StopReason,
    fields: Callable[[], dict[str, Any]],
) -> None:
    """A run that was stopped from outside: record its usage (a fenced usage-only write) and log how it ended."""
    token = execution.token
    usage = observer.usage
    current = await settled_write(
        runtime, execution.task_id, lambda t: t.with_usage(latest(usage, t.usage), run_token=token)
    )
    if current is not None and current.status == "cancelled" and current.run_token == token:
        log.info("task_finished", status="cancelled", reason=reason, **fields())
    else:
        # Superseded or handed back: another execution (or the queue) owns the task now.
        status = None if current is None else current.status
        log.info("task_stopped", reason=reason, status=status, **fields())


async def _fail(
    runtime: WorkerRuntime,
    execution: Execution,
    error: TaskError,
    reason: Literal["error", "timeout", "budget_exceeded"],
    usage_of: Callable[[Task], Usage],
    kind: str,
    duration_s: float,
) -> None:
    failed = await settled(runtime, execution, lambda t: t.to("failed", reason, error=error, usage=usage_of(t)))
    if failed is not None and failed.status == "failed":
        await dlq.add(runtime.redis, execution.task_id)
        metrics.task_finished(kind, "failed", duration_s)

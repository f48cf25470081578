"""One execution of a task: the arq job that takes its lease, runs its crew under its limits, and settles.

The stored task is the source of truth. An execution holds the task's lease
and fencing token (``leases``); the crew runs in the runtime's thread pool and
reports through an ``ExecutionObserver`` (``progress``); it is stopped through
its ``Execution`` flag (``stopping``); how it ended is written by ``settle``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from typing import Any

import msgspec
import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from crews.control import BudgetExceeded, CrewStopped
from crews.runner import run_crew
from jobs import dlq, metrics
from jobs.kinds import KINDS
from jobs.models import Task, TaskError
from jobs.queue import RetryLater, job_id_of
from jobs.telemetry import extract_context
from jobs.worker.progress import ExecutionObserver
from jobs.worker.runtime import WorkerRuntime
from jobs.worker.settle import Outcome, hand_back, settle
from jobs.worker.stopping import Execution, cancel_marker_set

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("agentfarm.jobs")


async def run_task(ctx: dict[str, Any], task_id: str) -> None:
    """The arq job: run the crew of task ``task_id`` once and record how it ended."""
    runtime: WorkerRuntime = ctx["runtime"]
    structlog.contextvars.bind_contextvars(task_id=task_id)
    try:
        await _run(runtime, task_id, job_id_of(ctx, task_id))
    finally:
        structlog.contextvars.unbind_contextvars("task_id", "tenant", "kind", "attempt")


async def _run(runtime: WorkerRuntime, task_id: str, job_id: str) -> None:
    store = runtime.store
    task = await store.get(task_id)
    if task is None:
        log.warning("task_missing", reason="expired or deleted before it ran")
        return
    if task.finished:
        log.info("task_already_finished", status=task.status)
        return
    structlog.contextvars.bind_contextvars(tenant=task.tenant, kind=task.kind)
    if task.attempt >= task.max_attempts:
        # Every start counts: a task whose runs keep dying (a crashing worker) must stop somewhere.
        await store.update(
            task_id,
            lambda t: (
                t
                if t.finished
                else t.to(
                    "failed",
                    "attempts_exhausted",
                    error=TaskError(
                        type="attempts_exhausted",
                        message=f"the task was started {t.attempt} times without finishing (its workers stopped)",
                    ),
                )
            ),
        )
        await dlq.add(runtime.redis, task_id)
        metrics.task_finished(task.kind, "failed", 0.0)
        log.warning("task_finished", status="failed", error_type="attempts_exhausted", attempts=task.attempt)
        return
    parent = extract_context(task.traceparent)
    queued_s = max(0.0, time.time() - task.updated_at.timestamp()) if task.status == "queued" else None
    if queued_s is not None:
        _queue_wait_span(task, parent, queued_s)
    attributes: dict[str, str | int] = {
        "agentfarm.task.id": task_id,
        "agentfarm.kind": task.kind,
        "agentfarm.tenant": task.tenant,
        "agentfarm.attempt": task.attempt + 1,
        "messaging.system": "arq",
        "messaging.message.id": job_id,
    }
    with tracer.start_as_current_span(
        f"run_task {task.kind}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        await _run_execution(runtime, task, job_id, queued_s)


def _queue_wait_span(task: Task, parent: Context, queued_s: float) -> None:
    """The time the task spent queued, as a span of its own between the request and the job."""
    end = time.time_ns()
    span = tracer.start_span(
        "queue wait",
        context=parent,
        start_time=end - int(queued_s * 1e9),
        attributes={"agentfarm.queue": KINDS[task.kind].queue},
    )
    span.end(end_time=end)
    metrics.DISPATCH_LATENCY.labels(kind=task.kind, queue=KINDS[task.kind].queue).observe(queued_s)


async def _run_execution(runtime: WorkerRuntime, task: Task, job_id: str, queued_s: float | None) -> None:
    store = runtime.store
    task_id = task.id
    token = await runtime.leases.acquire(task_id, runtime.settings.task_ttl_s)
    if token is None:
        # Another execution holds the lease (a duplicate delivery): look again once it may have lapsed.
        log.info("task_leased_elsewhere", retry_in_s=runtime.settings.worker.lease_s)
        raise RetryLater(defer=runtime.settings.worker.lease_s)
    execution = Execution(task_id, token, functools.partial(cancel_marker_set, runtime.sync_redis, task_id))
    try:
        started = await store.update(
            task_id,
            lambda t: t if t.finished else t.started(run_token=token, worker_id=runtime.worker_id, job_id=job_id),
        )
        if started is None or started.run_token != token:
            return  # cancelled or expired meanwhile
        runtime.active[task_id] = execution
        structlog.contextvars.bind_contextvars(attempt=started.attempt)
        log.info("task_started", queued_s=round(queued_s or 0.0, 3), worker_id=runtime.worker_id)
        began = time.monotonic()
        observer = ExecutionObserver(runtime, execution, started)
        outcome = await _execute(runtime, execution, started, observer)
        await observer.before_settle()
        await settle(runtime, execution, started, outcome, observer, time.monotonic() - began)
    except asyncio.CancelledError:
        # arq cancels running jobs on shutdown and re-queues them: hand the task back for another worker.
        execution.stop("shutdown")
        await asyncio.shield(hand_back(runtime, execution))
        raise
    finally:
        runtime.active.pop(task_id, None)
        await asyncio.shield(_release(runtime, execution))


async def _release(runtime: WorkerRuntime, execution: Execution) -> None:
    try:
        await runtime.leases.release(execution.task_id, execution.token)
    except (RedisError, OSError):
        log.warning("lease_release_failed", consequence="the lease lapses on its own")


async def _execute(runtime: WorkerRuntime, execution: Execution, task: Task, observer: ExecutionObserver) -> Outcome:
    """Run the crew in the thread pool under the kind's soft and hard time limits."""
    policy = runtime.settings.policy(task.kind)
    params = msgspec.convert(task.params, KINDS[task.kind].params)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future: asyncio.Future[Any] = loop.run_in_executor(
        runtime.pool,
        context.run,
        run_crew,
        KINDS[task.kind].crew,
        params,
        runtime.settings.llm,
        observer,
        runtime.settings.sources,
    )
    stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(execution.stopped.wait())
    began = time.monotonic()

    async def finished_within(limit_s: float, *, or_stop_request: bool) -> bool:
        waiters = {future, stop_waiter} if or_stop_request else {future}
        timeout = max(0.0, limit_s - (time.monotonic() - began))
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return future.done()

    try:
        if not await finished_within(policy.soft_timeout_s, or_stop_request=True):
            if execution.stop_reason is not None:
                # Cancelled, superseded or shutting down: stop waiting; the thread stops at its next LLM call.
                return Outcome(stopped=execution.stop_reason)
            execution.stop("soft_timeout")  # the crew stops before its next LLM call
            if not await finished_within(policy.timeout_s, or_stop_request=False):
                return Outcome(stopped="timeout")  # abandon the thread: it can make no further call
        return _outcome(future)
    finally:
        stop_waiter.cancel()
        if not future.done():  # abandoned: say when its thread ends (and consume its result)
            future.add_done_callback(functools.partial(_crew_ended, task.id, observer))


def _outcome(future: asyncio.Future[Any]) -> Outcome:
    try:
        return Outcome(report=future.result())
    except BudgetExceeded as over:
        return Outcome(error=over)  # not a stop from outside: the task fails, with its usage
    except CrewStopped as stopped:
        return Outcome(stopped=stopped.reason)
    except Exception as exc:  # noqa: BLE001 - every crew failure is classified, none is lost
        return Outcome(error=exc)


def _crew_ended(task_id: str, observer: ExecutionObserver, future: asyncio.Future[Any]) -> None:
    """Log when the thread of a crew we stopped waiting for ends, and how (consuming its result)."""
    if future.cancelled():
        return
    error = future.exception()
    ended = "completed" if error is None else f"stopped: {error.reason}" if isinstance(error, CrewStopped) else "error"
    usage = observer.usage
    log.info("crew_ended", task_id=task_id, ended=ended, llm_calls=usage.llm_calls)

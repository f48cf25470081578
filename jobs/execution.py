"""One execution of a task: the arq job that runs its crew and settles how it ended.

The stored task is the source of truth. An execution holds the task's lease
and fencing token; every write it makes is fenced (applied only while the task
is running under its token), so a superseded, cancelled or timed-out run can
never overwrite a newer state. Crews cannot be killed: to stop one, the
execution sets a flag that the crew's next LLM call checks (``CrewStopped``),
and stops waiting for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from arq import Retry
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import RedisError

from crews.control import CrewStopped, StopReason
from crews.failures import Failure, classify
from crews.results import Report, Usage
from crews.runner import run_crew
from jobs import dlq, metrics
from jobs.kinds import KINDS
from jobs.models import Task, TaskError
from jobs.ratelimit import SyncRateLimiter
from jobs.settings import KindPolicy, RateLimit
from jobs.telemetry import extract_context

if TYPE_CHECKING:
    from jobs.worker import WorkerRuntime

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("agentfarm.jobs")


class Execution:
    """A running execution as its worker sees it; ``stop`` may be called from the event loop only."""

    def __init__(self, task_id: str, token: int) -> None:
        self.task_id = task_id
        self.token = token
        self.stop_reason: StopReason | None = None
        self.stopped = asyncio.Event()
        self._flag = threading.Event()  # read by the crew's thread

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._flag.set()
            self.stopped.set()

    def check(self) -> None:
        """In the crew's thread: stop here if asked to."""
        if self._flag.is_set():
            raise CrewStopped(self.stop_reason or "cancelled")


class ExecutionObserver:
    """The crew's ``RunObserver``: stop checks and the LLM rate limit before calls, progress after."""

    def __init__(self, runtime: WorkerRuntime, execution: Execution) -> None:
        self._runtime = runtime
        self._execution = execution
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.usage = Usage()

    def before_llm_call(self) -> None:
        self._execution.check()
        llm = self._runtime.settings.llm
        if llm.rpm:
            wait_for_llm_slot(self._runtime.llm_limiter, llm.model_name, llm.rpm, self._execution)

    def on_progress(self, progress: int, stage: str) -> None:
        with self._lock:
            self._pending = (progress, stage)
        self._loop.call_soon_threadsafe(self._ensure_writer)

    def on_usage(self, usage: Usage) -> None:
        self.usage = usage

    async def flush(self) -> None:
        """Wait until every reported step is written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        # Coalesced: while a write is in flight only the latest progress is kept.
        while True:
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is None:
                return
            progress, stage = pending

            def advance(task: Task, progress: int = progress, stage: str = stage) -> Task:
                return task.with_progress(progress, stage)

            try:
                await fenced(self._runtime, self._execution, advance)
            except RedisError:
                log.warning("progress_write_failed", task_id=self._execution.task_id, exc_info=True)


def wait_for_llm_slot(limiter: SyncRateLimiter, model: str, rpm: int, execution: Execution) -> None:
    """Block the crew's thread until the shared per-model LLM rate limit allows a call."""
    while True:
        # No bursts: calls are spread evenly, as a provider's per-minute quota expects.
        decision = limiter.hit(f"llm:{model}", RateLimit(rpm, 60), burst=1)
        if decision.allowed:
            return
        time.sleep(min(decision.retry_after_s, 0.5))
        execution.check()


async def fenced(runtime: WorkerRuntime, execution: Execution, change: Callable[[Task], Task]) -> Task | None:
    """Apply ``change`` only while the task runs under this execution's token."""

    def guarded(task: Task) -> Task:
        if task.status != "running" or task.run_token != execution.token:
            return task
        return change(task)

    return await runtime.store.update(execution.task_id, guarded)


async def settled(runtime: WorkerRuntime, execution: Execution, change: Callable[[Task], Task]) -> Task | None:
    """A fenced final write that outlasts a Redis blip (the task must not stay running by mistake)."""
    delay = 0.2
    deadline = time.monotonic() + 60
    while True:
        try:
            return await fenced(runtime, execution, change)
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                log.exception(
                    "final_state_not_written",
                    task_id=execution.task_id,
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


async def run_task(ctx: dict[str, Any], task_id: str) -> None:
    """The arq job: run the crew of task ``task_id`` once and record how it ended."""
    runtime: WorkerRuntime = ctx["runtime"]
    structlog.contextvars.bind_contextvars(task_id=task_id)
    try:
        await _run(runtime, task_id, str(ctx.get("job_id", task_id)))
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
                    error=TaskError(
                        type="attempts_exhausted",
                        message=f"the task was started {t.attempt} times without finishing (its workers stopped)",
                    ),
                )
            ),
        )
        await dlq.add(runtime.redis, task_id)
        metrics.task_finished(task.kind, "failed", 0.0)
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
        log.info("task_leased_elsewhere", retry_in_s=runtime.settings.worker_lease_s)
        raise Retry(defer=runtime.settings.worker_lease_s)
    execution = Execution(task_id, token)
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
        observer = ExecutionObserver(runtime, execution)
        outcome = await _execute(runtime, execution, started, observer)
        await observer.flush()
        await _settle(runtime, execution, started, outcome, observer.usage, time.monotonic() - began)
    except asyncio.CancelledError:
        # arq cancels running jobs on shutdown and re-queues them: hand the task back for another worker.
        execution.stop("shutdown")
        await asyncio.shield(_hand_back(runtime, execution))
        raise
    finally:
        runtime.active.pop(task_id, None)
        await asyncio.shield(_release(runtime, execution))


async def _release(runtime: WorkerRuntime, execution: Execution) -> None:
    try:
        await runtime.leases.release(execution.task_id, execution.token)
    except (RedisError, OSError):
        log.warning("lease_release_failed", consequence="the lease lapses on its own")


async def _hand_back(runtime: WorkerRuntime, execution: Execution) -> None:
    handed = await settled(
        runtime,
        execution,
        lambda t: t.to("queued", stage="handed back: its worker shut down", attempt=max(0, t.attempt - 1)),
    )
    if handed is not None and handed.status == "queued":
        log.info("task_handed_back", reason="worker shutting down")


async def _execute(runtime: WorkerRuntime, execution: Execution, task: Task, observer: ExecutionObserver) -> Outcome:
    """Run the crew in the thread pool under the kind's soft and hard time limits."""
    policy = runtime.settings.policy(task.kind)
    params = msgspec.convert(task.params, KINDS[task.kind].params_type)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future: asyncio.Future[Any] = loop.run_in_executor(
        runtime.pool, context.run, run_crew, task.kind, params, runtime.settings.llm, observer
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
        future.add_done_callback(_log_abandoned)


def _outcome(future: asyncio.Future[Any]) -> Outcome:
    try:
        return Outcome(report=future.result())
    except CrewStopped as stopped:
        return Outcome(stopped=stopped.reason)
    except Exception as exc:  # noqa: BLE001 - every crew failure is classified, none is lost
        return Outcome(error=exc)


def _log_abandoned(future: asyncio.Future[Any]) -> None:
    # Consume the result of a crew we stopped waiting for, so it is not reported as never retrieved.
    if not future.cancelled():
        future.exception()


async def _settle(
    runtime: WorkerRuntime, execution: Execution, task: Task, outcome: Outcome, usage: Usage, duration_s: float
) -> None:
    policy = runtime.settings.policy(task.kind)
    metrics.llm_usage(
        usage.model or runtime.settings.llm.model_name,
        task.kind,
        calls=usage.llm_calls,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    fields = {"duration_s": round(duration_s, 3), "llm_calls": usage.llm_calls, "model": usage.model}
    if outcome.report is not None:
        report = outcome.report
        done = await settled(runtime, execution, lambda t: t.to("completed", result=report, usage=usage))
        if done is not None and done.status == "completed":
            metrics.task_finished(task.kind, "completed", duration_s)
        log.info("task_finished", status="completed", **fields)
        return
    if outcome.stopped is not None:
        reason = outcome.stopped
        if reason in ("soft_timeout", "timeout"):
            limit = policy.soft_timeout_s if reason == "soft_timeout" else policy.timeout_s
            error = TaskError(type="timeout", message=f"the crew did not finish within {limit:g} s ({reason})")
            await _fail(runtime, execution, error, usage, task.kind, duration_s)
            log.warning("task_finished", status="failed", error_type="timeout", reason=reason, **fields)
        else:
            log.info("task_stopped", reason=reason, **fields)  # cancelled/superseded: the state is already settled
        return
    assert outcome.error is not None
    failure = classify(outcome.error)
    metrics.LLM_ERRORS.labels(model=usage.model or runtime.settings.llm.model_name, error_type=failure.type).inc()
    trace.get_current_span().set_status(Status(StatusCode.ERROR, failure.type))
    error = TaskError(type=failure.type, message=failure.message)
    if failure.transient and task.attempt < task.max_attempts:
        delay = backoff_s(policy, task.attempt, failure)
        written = await settled(
            runtime,
            execution,
            lambda t: t.to(
                "retrying", error=error, usage=usage, stage=f"retrying in {delay:.0f} s after {failure.type}"
            ),
        )
        log.warning(
            "task_retrying", error_type=failure.type, error=failure.message, retry_in_s=round(delay, 2), **fields
        )
        if written is not None and written.status == "retrying":
            metrics.TASK_RETRIES.labels(kind=task.kind).inc()
            raise Retry(defer=delay)
        return
    if failure.transient:
        error = TaskError(type=failure.type, message=f"{failure.message} (gave up after {task.attempt} attempts)")
    await _fail(runtime, execution, error, usage, task.kind, duration_s)
    log.warning("task_finished", status="failed", error_type=error.type, error=error.message, **fields)


async def _fail(
    runtime: WorkerRuntime, execution: Execution, error: TaskError, usage: Usage, kind: str, duration_s: float
) -> None:
    failed = await settled(runtime, execution, lambda t: t.to("failed", error=error, usage=usage))
    if failed is not None and failed.status == "failed":
        await dlq.add(runtime.redis, execution.task_id)
        metrics.task_finished(kind, "failed", duration_s)

"""One execution of a task: the arq job that runs its crew and settles how it ended.

The stored task is the source of truth. An execution holds the task's lease
and fencing token; every write it makes is fenced (applied only while the task
is running under its token), so a superseded, cancelled or timed-out run can
never overwrite a newer state. Crews cannot be killed: to stop one, the
execution sets a flag that the crew checks at its next stop point (before
every LLM call, search or page fetch: ``CrewStopped``), and stops waiting for
it. A stop point also looks for the task's cancel marker in Redis, so a
cancel is seen by the crew the moment the API has answered it.

Usage is recorded as calls complete, also onto a task that ended cancelled or
failed under this execution, so tokens spent before a stop are never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
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
from crews.results import Report, Usage, latest
from crews.runner import run_crew
from jobs import dlq, metrics
from jobs.kinds import KINDS
from jobs.models import Task, TaskError
from jobs.ratelimit import SyncRateLimiter
from jobs.settings import KindPolicy, RateLimit
from jobs.store import cancel_key
from jobs.telemetry import extract_context

if TYPE_CHECKING:
    from redis import Redis as SyncRedis

    from jobs.worker import WorkerRuntime

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("agentfarm.jobs")


class Execution:
    """A running execution as its worker sees it.

    ``stop`` is called from the event loop; ``check`` (the crew's stop point) from the crew's thread.
    """

    def __init__(self, task_id: str, token: int, cancel_requested: Callable[[], bool] | None = None) -> None:
        self.task_id = task_id
        self.token = token
        self.stop_reason: StopReason | None = None
        self.stopped = asyncio.Event()
        self._flag = threading.Event()  # read by the crew's thread
        self._cancel_requested = cancel_requested
        self._loop = asyncio.get_running_loop()

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._flag.set()
            self.stopped.set()

    @property
    def stopping(self) -> bool:
        """Whether this execution was asked to stop (safe from any thread)."""
        return self._flag.is_set()

    def check(self) -> None:
        """In the crew's thread: stop here if asked to, or if the task was cancelled (its marker in Redis)."""
        if self._flag.is_set():
            raise CrewStopped(self.stop_reason or "cancelled")
        if self._cancel_requested is not None and self._cancel_requested():
            self._flag.set()  # later stop points need no round trip
            # Wake the execution too, in case the cancel's wake-up message did not reach this worker
            # (a closed loop means the worker is shutting down: nothing left to wake).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.stop, "cancelled")
            raise CrewStopped("cancelled")


def cancel_marker_set(redis: SyncRedis, task_id: str) -> bool:
    """Whether the task's cancel marker exists: one cheap EXISTS from the crew's thread.

    A Redis error does not stop the crew (the in-process flag, set by the
    cancel's wake-up or the lease watch, still applies).
    """
    try:
        return bool(redis.exists(cancel_key(task_id)))
    except (RedisError, OSError) as exc:
        log.warning("cancel_check_failed", task_id=task_id, error=str(exc))
        return False


class ExecutionObserver:
    """The crew's ``RunObserver``: stop points and the LLM rate limit before calls, progress and usage after."""

    def __init__(self, runtime: WorkerRuntime, execution: Execution, kind: str) -> None:
        self._runtime = runtime
        self._execution = execution
        self._kind = kind
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None
        self._pending_usage: Usage | None = None
        self._writer: asyncio.Task[None] | None = None
        self.usage = Usage()  # this execution's cumulative usage so far

    def stop_point(self) -> None:
        self._execution.check()

    def before_llm_call(self) -> None:
        self.stop_point()
        llm = self._runtime.settings.llm
        if llm.rpm:
            wait_for_llm_slot(self._runtime.llm_limiter, llm.model_name, llm.rpm, self.stop_point)

    def on_progress(self, progress: int, stage: str) -> None:
        with self._lock:
            self._pending = (progress, stage)
        self._wake_writer()

    def on_usage(self, usage: Usage) -> None:
        """In the crew's thread, as calls complete (also after the execution stopped waiting for it)."""
        with self._lock:
            if not usage.newer_than(self.usage):
                return
            spent = usage.minus(self.usage)
            self.usage = usage
            self._pending_usage = usage
        metrics.llm_usage(
            usage.model or self._runtime.settings.llm.model_name,
            self._kind,
            calls=spent.llm_calls,
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
        )
        # While the run goes on, the next progress write (before the next call) or the final write
        # carries it; once stopped, nothing else will: write it now.
        if self._execution.stopping:
            self._wake_writer()

    async def flush(self) -> None:
        """Wait until every reported step is written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def _wake_writer(self) -> None:
        # An abandoned crew can outlive its worker's loop: then nothing can be written any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ensure_writer)

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        # Coalesced: while a write is in flight only the latest progress and usage are kept.
        token = self._execution.token
        while True:
            with self._lock:
                pending, self._pending = self._pending, None
                usage, self._pending_usage = self._pending_usage, None
            if pending is None and usage is None:
                return

            def advance(task: Task, pending: tuple[int, str] | None = pending, usage: Usage | None = usage) -> Task:
                if task.run_token != token:
                    return task  # fenced: another execution's task now
                if pending is not None:
                    task = task.with_progress(*pending)  # only while running
                if usage is not None:
                    task = task.with_usage(usage, run_token=token)  # also once cancelled or failed
                return task

            try:
                await self._runtime.store.update(self._execution.task_id, advance)
            except (RedisError, OSError):
                log.warning("progress_write_failed", task_id=self._execution.task_id, exc_info=True)


def wait_for_llm_slot(limiter: SyncRateLimiter, model: str, rpm: int, stop_point: Callable[[], None]) -> None:
    """Block the crew's thread until the shared per-model LLM rate limit allows a call (or the run stops)."""
    while True:
        # No bursts: calls are spread evenly, as a provider's per-minute quota expects.
        decision = limiter.hit(f"llm:{model}", RateLimit(rpm, 60), burst=1)
        if decision.allowed:
            return
        time.sleep(min(decision.retry_after_s, 0.5))
        stop_point()


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
        log.info("task_leased_elsewhere", retry_in_s=runtime.settings.worker.lease_s)
        raise Retry(defer=runtime.settings.worker.lease_s)
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
        observer = ExecutionObserver(runtime, execution, task.kind)
        outcome = await _execute(runtime, execution, started, observer)
        await observer.flush()
        await _settle(runtime, execution, started, outcome, observer, time.monotonic() - began)
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
    params = msgspec.convert(task.params, KINDS[task.kind].params)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future: asyncio.Future[Any] = loop.run_in_executor(
        runtime.pool, context.run, run_crew, KINDS[task.kind].crew, params, runtime.settings.llm, observer
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


async def _settle(
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
        done = await settled(runtime, execution, lambda t: t.to("completed", result=report, usage=usage_of(t)))
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
            await _fail(runtime, execution, error, usage_of, task.kind, duration_s)
            log.warning("task_finished", status="failed", error_type="timeout", reason=reason, **fields())
        else:
            await _stopped(runtime, execution, observer, reason, fields)
        return
    assert outcome.error is not None
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
                "retrying", error=error, usage=usage_of(t), stage=f"retrying in {delay:.0f} s after {failure.type}"
            ),
        )
        log.warning(
            "task_retrying", error_type=failure.type, error=failure.message, retry_in_s=round(delay, 2), **fields()
        )
        if written is not None and written.status == "retrying":
            metrics.TASK_RETRIES.labels(kind=task.kind).inc()
            raise Retry(defer=delay)
        return
    if failure.transient:
        error = TaskError(type=failure.type, message=f"{failure.message} (gave up after {task.attempt} attempts)")
    await _fail(runtime, execution, error, usage_of, task.kind, duration_s)
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
    usage_of: Callable[[Task], Usage],
    kind: str,
    duration_s: float,
) -> None:
    failed = await settled(runtime, execution, lambda t: t.to("failed", error=error, usage=usage_of(t)))
    if failed is not None and failed.status == "failed":
        await dlq.add(runtime.redis, execution.task_id)
        metrics.task_finished(kind, "failed", duration_s)

"""The arq worker: takes task ids off queues and runs their crews in a thread pool.

One process serves one or more queues (an arq ``Worker`` per queue, sharing a
``WorkerRuntime``: the settings, the task store and the crew thread pool).
Crews are synchronous and I/O-bound, so they run in a dedicated
``ThreadPoolExecutor`` with the caller's context copied in (log fields and
trace context reach the crew's thread).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import structlog
from arq import Worker, func
from arq.connections import RedisSettings
from redis.asyncio import Redis

from crews.llm import LLMConfig
from crews.runner import run_crew
from jobs.kinds import KINDS, Queue
from jobs.models import Task, TaskError, utcnow
from jobs.progress import ProgressReporter
from jobs.queue import JOB_FUNCTION, deserialize, queue_key, serialize, workers_key
from jobs.settings import Settings
from jobs.store import TaskStore

log = structlog.get_logger(__name__)


class WorkerRuntime:
    """What every job in this process shares; owned by the worker's lifecycle."""

    def __init__(self, settings: Settings, queues: tuple[Queue, ...], redis: Redis) -> None:
        self.settings = settings
        self.queues = queues
        self.redis = redis
        self.store = TaskStore(redis, settings.task_ttl_s)
        self.pool = ThreadPoolExecutor(max_workers=settings.worker_concurrency, thread_name_prefix="crew")
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._beat()
        self._heartbeat = asyncio.create_task(self._beat_forever())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for queue in self.queues:
            await self.redis.zrem(workers_key(queue), self.worker_id)
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.redis.aclose()

    async def _beat(self) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zadd(workers_key(queue), {self.worker_id: now})
                # Forget workers that stopped beating long ago (crashed without saying so).
                pipe.zremrangebyscore(workers_key(queue), "-inf", now - 60 * self.settings.worker_heartbeat_s)
            await pipe.execute()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_s)
            try:
                await self._beat()
            except Exception:
                log.warning("heartbeat_failed", exc_info=True)


async def run_task(ctx: dict[str, Any], task_id: str) -> None:
    """The arq job: run the crew of task ``task_id`` and record how it ended."""
    runtime: WorkerRuntime = ctx["runtime"]
    store = runtime.store
    structlog.contextvars.bind_contextvars(task_id=task_id)
    try:
        task = await store.get(task_id)
        if task is None:
            log.warning("task_missing", reason="expired or deleted before it ran")
            return
        if task.finished:
            log.info("task_already_finished", status=task.status)
            return
        structlog.contextvars.bind_contextvars(tenant=task.tenant, kind=task.kind)
        await _run(runtime, task, attempt=int(ctx.get("job_try", 1)))
    finally:
        structlog.contextvars.unbind_contextvars("task_id", "tenant", "kind")


async def _run(runtime: WorkerRuntime, task: Task, attempt: int) -> None:
    store = runtime.store
    spec = KINDS[task.kind]
    policy = runtime.settings.policy(task.kind)
    params = msgspec.convert(task.params, spec.params_type)
    started = time.monotonic()
    queued_s = max(0.0, time.time() - task.created_at.timestamp())
    running = await store.update(
        task.id,
        lambda t: t.to("running", attempt=attempt, progress=0, stage="starting", started_at=t.started_at or utcnow()),
    )
    if running is None:
        return
    log.info("task_started", attempt=attempt, queued_s=round(queued_s, 3))
    loop = asyncio.get_running_loop()
    reporter = ProgressReporter(loop, store, task.id)
    context = contextvars.copy_context()
    future = loop.run_in_executor(
        runtime.pool, context.run, run_crew, task.kind, params, runtime.settings.llm, reporter
    )
    try:
        report = await asyncio.wait_for(future, timeout=policy.timeout_s)
    except TimeoutError:
        await _finish_failed(
            runtime,
            task.id,
            reporter,
            TaskError(type="timeout", message=f"the crew did not finish within {policy.timeout_s:g} s"),
            started,
        )
        return
    except Exception as exc:  # noqa: BLE001 - whatever the crew raised, the task fails with it recorded
        await _finish_failed(runtime, task.id, reporter, _task_error(exc, runtime.settings.llm), started)
        return
    await reporter.flush()
    await store.update(task.id, lambda t: t.to("completed", result=report, usage=reporter.usage))
    log.info(
        "task_finished",
        status="completed",
        duration_s=round(time.monotonic() - started, 3),
        llm_calls=reporter.usage.llm_calls,
        model=reporter.usage.model,
    )


async def _finish_failed(
    runtime: WorkerRuntime, task_id: str, reporter: ProgressReporter, error: TaskError, started: float
) -> None:
    await reporter.flush()
    await runtime.store.update(
        task_id, lambda t: t if t.finished else t.to("failed", error=error, usage=reporter.usage)
    )
    log.warning(
        "task_finished",
        status="failed",
        error_type=error.type,
        error=error.message,
        duration_s=round(time.monotonic() - started, 3),
    )


def _task_error(exc: BaseException, llm: LLMConfig) -> TaskError:
    """Turn a crew's exception into an error a person can act on."""
    message = str(exc) or type(exc).__name__
    return TaskError(type=type(exc).__name__, message=f"{message} (model {llm.model_name})")


def build_workers(
    settings: Settings, queues: tuple[Queue, ...], runtime: WorkerRuntime, *, burst: bool = False
) -> list[Worker]:
    """An arq ``Worker`` per queue, all sharing ``runtime``."""
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    workers = []
    for queue in queues:
        kinds = [k for k, spec in KINDS.items() if spec.queue == queue]
        timeout = max(settings.policy(k).timeout_s for k in kinds) + 60
        workers.append(
            Worker(
                functions=[
                    func(
                        run_task,
                        name=JOB_FUNCTION,
                        timeout=timeout,
                        max_tries=max(settings.policy(k).max_attempts for k in kinds) + 2,
                    )
                ],
                queue_name=queue_key(queue),
                redis_settings=redis_settings,
                burst=burst,
                handle_signals=False,
                max_jobs=settings.worker_concurrency,
                poll_delay=settings.worker_poll_delay_s,
                queue_read_limit=max(1000, settings.worker_concurrency * 50),
                keep_result=60,
                ctx={"runtime": runtime},
                job_serializer=serialize,
                job_deserializer=deserialize,
                log_results=False,
            )
        )
    return workers


async def serve(settings: Settings, queues: tuple[Queue, ...], *, burst: bool = False) -> None:
    """Run workers for ``queues`` until a signal (or, with ``burst``, until the queues are empty)."""
    redis = Redis.from_url(settings.redis_url)
    runtime = WorkerRuntime(settings, queues, redis)
    workers = build_workers(settings, queues, runtime, burst=burst)
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        log.info("worker_stopping", signal=signal.Signals(signum).name)
        for worker in workers:
            worker.handle_sig(signal.Signals(signum))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    await runtime.start()
    log.info(
        "worker_started",
        queues=list(queues),
        concurrency=settings.worker_concurrency,
        model=settings.llm.model_name,
        demo_model=settings.llm.is_demo,
        worker_id=runtime.worker_id,
    )
    try:
        await asyncio.gather(*(w.async_run() for w in workers), return_exceptions=True)
    finally:
        for worker in workers:
            await worker.close()
        await runtime.stop()
        log.info("worker_stopped", worker_id=runtime.worker_id)

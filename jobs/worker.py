"""The worker process: arq workers per queue, the crew thread pool, leases, recovery, shutdown.

One process serves one or more queues (an arq ``Worker`` per queue) sharing a
``WorkerRuntime``: the settings, the task store, the crew thread pool, the
executions it is running, and the background loops that keep them honest
(heartbeat, lease refresh, cancellation watch, the cancel listener that stops
a cancelled crew's execution at once, and the reaper that re-queues tasks
whose worker died).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from arq import Worker, func
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from jobs.execution import Execution, run_task
from jobs.kinds import KINDS, Queue
from jobs.leases import Leases, reap
from jobs.queue import JOB_FUNCTION, deserialize, queue_key, serialize, workers_key
from jobs.ratelimit import SyncRateLimiter
from jobs.settings import Settings
from jobs.store import CANCEL_CHANNEL, TaskStore

log = structlog.get_logger(__name__)

# arq's own try counter must never end a task: attempts are counted on the task itself.
_ARQ_MAX_TRIES = 10_000
# A crew thread's Redis commands (stop points, rate limit) never hang a crew on a dead connection.
_SYNC_TIMEOUT_S = 5.0


class WorkerRuntime:
    """What every job in this process shares; owned by ``serve``."""

    def __init__(self, settings: Settings, queues: tuple[Queue, ...], redis: ArqRedis) -> None:
        self.settings = settings
        self.queues = queues
        self.redis = redis
        self.store = TaskStore(redis, settings.task_ttl_s)
        self.leases = Leases(redis, settings.worker.lease_s)
        # For crew threads: the LLM rate limit and the cancel marker checked at every stop point.
        self.sync_redis: SyncRedis = SyncRedis.from_url(
            settings.redis.url, socket_timeout=_SYNC_TIMEOUT_S, socket_connect_timeout=_SYNC_TIMEOUT_S
        )
        self.llm_limiter = SyncRateLimiter(self.sync_redis)
        # Twice the concurrency: a crew that was stopped but is still inside an LLM call
        # keeps its thread for a while; the spare threads keep that from taking a slot.
        self.pool = ThreadPoolExecutor(max_workers=settings.worker.concurrency * 2, thread_name_prefix="crew")
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.active: dict[str, Execution] = {}
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._beat()
        interval = max(0.1, self.settings.worker.lease_s / 3)
        self._loops = [
            asyncio.create_task(self._every(self.settings.worker.heartbeat_s, self._beat, "heartbeat")),
            asyncio.create_task(self._every(interval, self._watch, "lease_watch")),
            asyncio.create_task(self._every(interval, self._reap, "reaper")),
            asyncio.create_task(self._listen_for_cancels()),
        ]

    async def stop(self) -> None:
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            for queue in self.queues:
                await self.redis.zrem(workers_key(queue), self.worker_id)
        except RedisError:
            log.warning("heartbeat_not_removed", consequence="readiness forgets this worker after 3 beats")
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.redis.aclose()
        self.sync_redis.close()

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]], name: str) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await step()
            except (RedisError, OSError) as exc:
                log.warning("background_step_failed", step=name, error=str(exc))

    async def _beat(self) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zadd(workers_key(queue), {self.worker_id: now})
                # Forget workers that stopped beating long ago (crashed without saying so).
                pipe.zremrangebyscore(workers_key(queue), "-inf", now - 60 * self.settings.worker.heartbeat_s)
            await pipe.execute()

    async def _watch(self) -> None:
        """Keep our leases alive, and stop executions whose task was cancelled or taken over."""
        executions = list(self.active.values())
        if not executions:
            return
        tasks = await self.store.get_many([e.task_id for e in executions])
        for execution, task in zip(executions, tasks, strict=True):
            if not await self.leases.refresh(execution.task_id, execution.token):
                execution.stop("superseded")
            elif task is None or task.status == "cancelled":
                execution.stop("cancelled")
            elif task.status != "running" or task.run_token != execution.token:
                execution.stop("superseded")

    async def _listen_for_cancels(self) -> None:
        """Stop the execution of a task the moment it is cancelled (``TaskStore.cancel`` publishes its id).

        The lease watch still catches a cancel missed while this was reconnecting,
        and the crew's own stop point sees the cancel marker in any case.
        """
        delay = 0.5
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCEL_CHANNEL)
                delay = 0.5
                async for message in pubsub.listen():
                    data = message.get("data")
                    task_id = data.decode() if isinstance(data, bytes) else str(data)
                    execution = self.active.get(task_id)
                    if execution is not None:
                        execution.stop("cancelled")
            except (RedisError, OSError) as exc:
                log.warning("cancel_listener_reconnecting", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _reap(self) -> None:
        await reap(self.redis, self.store)


def _worker(settings: Settings, queue: Queue, runtime: WorkerRuntime, *, burst: bool) -> Worker:
    kinds = [k for k, spec in KINDS.items() if spec.queue == queue]
    # A backstop only: executions enforce the kinds' own limits and hand tasks back themselves.
    timeout = max(settings.policy(k).timeout_s for k in kinds) + settings.worker.shutdown_grace_s + 60
    return Worker(
        functions=[func(run_task, name=JOB_FUNCTION, timeout=timeout, max_tries=_ARQ_MAX_TRIES)],
        queue_name=queue_key(queue),
        redis_settings=RedisSettings.from_dsn(settings.redis.url),
        burst=burst,
        handle_signals=False,
        max_jobs=settings.worker.concurrency,
        poll_delay=settings.worker.poll_delay_s,
        # Running jobs stay in arq's queue set; read past them so idle workers never starve.
        queue_read_limit=max(1000, settings.worker.concurrency * 50),
        keep_result=0,
        ctx={"runtime": runtime},
        job_serializer=serialize,
        job_deserializer=deserialize,
        log_results=False,
    )


class _Supervisor:
    """Runs an arq worker per queue and starts a new one when Redis drops the old one's connection."""

    def __init__(self, settings: Settings, queues: tuple[Queue, ...], runtime: WorkerRuntime, burst: bool) -> None:
        self.settings = settings
        self.queues = queues
        self.runtime = runtime
        self.burst = burst
        self.stopping = False
        self.workers: list[Worker] = []

    async def run_queue(self, queue: Queue) -> None:
        delay = 0.5
        while not self.stopping:
            worker = _worker(self.settings, queue, self.runtime, burst=self.burst)
            self.workers.append(worker)
            try:
                await worker.async_run()
            except asyncio.CancelledError:
                if self.stopping:
                    return
                raise
            except (RedisError, OSError) as exc:
                # Running jobs keep going on the old worker; a new one resumes polling once Redis is back.
                log.warning("queue_connection_lost", queue=queue, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self.burst:
                return

    def stop_picking(self) -> None:
        for worker in self.workers:
            worker.allow_pick_jobs = False

    def cancel_all(self) -> None:
        self.stopping = True
        for worker in self.workers:
            worker.handle_sig(signal.SIGTERM)


async def serve(settings: Settings, queues: tuple[Queue, ...], *, burst: bool = False) -> None:
    """Run workers for ``queues`` until SIGTERM/SIGINT (or, with ``burst``, until the queues are empty).

    Shutdown: stop taking jobs, let running crews finish for up to
    ``worker_shutdown_grace_s``, then hand the rest back to the queue (the
    crews' next LLM calls are refused). A second signal skips the grace period.
    """
    redis = await create_pool(
        RedisSettings.from_dsn(settings.redis.url), job_serializer=serialize, job_deserializer=deserialize
    )
    runtime = WorkerRuntime(settings, queues, redis)
    supervisor = _Supervisor(settings, queues, runtime, burst)
    loop = asyncio.get_running_loop()
    draining: asyncio.Task[None] | None = None

    async def drain(grace_s: float) -> None:
        supervisor.stop_picking()
        deadline = time.monotonic() + grace_s
        while runtime.active and time.monotonic() < deadline:  # noqa: ASYNC110 - executions end on their own
            await asyncio.sleep(0.1)
        if runtime.active:
            log.warning("worker_handing_back", tasks=list(runtime.active))
        supervisor.cancel_all()

    def on_signal(signum: int) -> None:
        nonlocal draining
        first = draining is None
        log.info(
            "worker_stopping",
            signal=signal.Signals(signum).name,
            running=len(runtime.active),
            grace_s=settings.worker.shutdown_grace_s if first else 0,
        )
        if draining is not None:
            draining.cancel()
        draining = loop.create_task(drain(settings.worker.shutdown_grace_s if first else 0))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    await runtime.start()
    log.info(
        "worker_started",
        queues=list(queues),
        concurrency=settings.worker.concurrency,
        model=settings.llm.model_name,
        demo_model=settings.llm.is_demo,
        worker_id=runtime.worker_id,
        lease_s=settings.worker.lease_s,
    )
    try:
        await asyncio.gather(*(supervisor.run_queue(q) for q in queues))
    finally:
        supervisor.stopping = True
        for worker in supervisor.workers:
            try:
                await worker.close()
            except (RedisError, OSError):
                log.warning("worker_close_failed", exc_info=True)
        await runtime.stop()
        log.info("worker_stopped", worker_id=runtime.worker_id)

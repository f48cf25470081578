"""What every execution in a worker process shares, and the loops that keep running tasks honest.

``WorkerRuntime`` holds the settings, the one Redis pool, the task store, the
leases, the crew thread pool and the executions running now; its background
loops are the heartbeat, the lease watch (refresh our leases, stop executions
whose task was cancelled or taken over), the cancel listener (stop a
cancelled crew's execution at once) and the reaper (re-queue tasks whose
worker died).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from redis.exceptions import RedisError

from jobs.connections import redis_client, sync_redis_client
from jobs.kinds import Queue
from jobs.queue import workers_key
from jobs.ratelimit import SyncRateLimiter
from jobs.settings import Settings
from jobs.store import CANCEL_CHANNEL, TaskStore
from jobs.worker.leases import Leases, reap
from jobs.worker.stopping import Execution

log = structlog.get_logger(__name__)

# A crew thread's Redis commands (stop points, rate limit) never hang a crew on a dead connection.
_SYNC_TIMEOUT_S = 5.0


class WorkerRuntime:
    """What every job in this process shares; owned by ``serve``."""

    def __init__(self, settings: Settings, queues: tuple[Queue, ...]) -> None:
        self.settings = settings
        self.queues = queues
        # One pool for the process: every queue's arq worker, the store, leases and the loops below.
        self.redis = redis_client(settings.redis)
        self.store = TaskStore(self.redis, settings.task_ttl_s)
        self.leases = Leases(self.redis, settings.worker.lease_s)
        # For crew threads: the LLM rate limit and the cancel marker checked at every stop point.
        self.sync_redis = sync_redis_client(settings.redis, timeout_s=_SYNC_TIMEOUT_S)
        self.llm_limiter = SyncRateLimiter(self.sync_redis)
        # Twice the concurrency: a crew that was stopped but is still inside an LLM call
        # keeps its thread for a while; the spare threads keep that from taking a slot.
        self.pool = ThreadPoolExecutor(max_workers=settings.worker.concurrency * 2, thread_name_prefix="crew")
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.active: dict[str, Execution] = {}  # by task id
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            await self._beat()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable_at_start", error=str(exc), consequence="workers retry until it is back")
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

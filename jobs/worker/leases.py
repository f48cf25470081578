"""Execution leases: one execution per task at a time, and recovery when a worker dies.

A worker starting a task takes a fencing token (``INCR``) and a lease key
holding it (``SET NX PX``), and puts the task in the running set. While the
crew runs, the worker refreshes the lease every third of its length. If the
worker dies (SIGKILL, lost machine), the lease lapses and any worker's reaper
puts the task back on its queue at once: recovery takes at most one lease
length plus one reaper pass, instead of arq's job timeout.
"""

from __future__ import annotations

import msgspec
import structlog
from redis.asyncio import Redis

from jobs.models import Task
from jobs.queue import QueueRedis, make_runnable
from jobs.store import TaskStore

log = structlog.get_logger(__name__)

RUNNING_SET = "agentfarm:running"

# Refresh or release only a lease we still hold.
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def lease_key(task_id: str) -> str:
    return f"agentfarm:lease:{task_id}"


def fence_key(task_id: str) -> str:
    return f"agentfarm:fence:{task_id}"


class Leases:
    """Takes, refreshes and releases execution leases."""

    def __init__(self, redis: Redis, lease_s: float) -> None:
        self.redis = redis
        self.lease_ms = int(lease_s * 1000)
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, task_id: str, ttl_s: int) -> int | None:
        """A new fencing token for this execution, or ``None`` when another execution holds the lease."""
        token = int(await self.redis.incr(fence_key(task_id)))
        await self.redis.expire(fence_key(task_id), ttl_s)
        if not await self.redis.set(lease_key(task_id), token, nx=True, px=self.lease_ms):
            return None
        await self.redis.sadd(RUNNING_SET, task_id)  # type: ignore[misc]
        return token

    async def refresh(self, task_id: str, token: int) -> bool:
        """Extend our lease; ``False`` means we lost it (it lapsed and someone else may run the task)."""
        return bool(await self._refresh(keys=[lease_key(task_id)], args=[token, self.lease_ms]))

    async def release(self, task_id: str, token: int) -> None:
        await self._release(keys=[lease_key(task_id)], args=[token])
        await self.redis.srem(RUNNING_SET, task_id)  # type: ignore[misc]


async def reap(pool: QueueRedis, store: TaskStore) -> list[str]:
    """Re-queue every running task whose lease has lapsed; returns their ids."""
    reclaimed: list[str] = []
    for raw in await pool.smembers(RUNNING_SET):  # type: ignore[misc]
        task_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        if await pool.exists(lease_key(task_id)):
            continue
        moved = _BackToQueue()
        task = await store.update(task_id, moved)
        if task is None or not moved.applied:
            # Settled or re-queued meanwhile (by its worker, the API or another reaper).
            await pool.srem(RUNNING_SET, task_id)  # type: ignore[misc]
            continue
        await requeue_job(pool, store, task)
        await pool.srem(RUNNING_SET, task_id)  # type: ignore[misc]
        reclaimed.append(task_id)
        log.warning(
            "task_recovered",
            task_id=task_id,
            reason="lease lapsed: its worker stopped responding",
            previous_worker=task.worker_id,
        )
    return reclaimed


class _BackToQueue:
    """The reaper's change: only a task still running (its lease lapsed) goes back to the queue.

    ``applied`` tells whether the change that was written moved it (``update`` may
    call a change more than once; the last call is the one written).
    """

    applied = False

    def __call__(self, task: Task) -> Task:
        self.applied = task.status == "running"
        if not self.applied:
            return task
        return task.to("queued", "lease_lapsed", stage="re-queued: its worker stopped responding")


async def requeue_job(pool: QueueRedis, store: TaskStore, task: Task) -> None:
    """Make the task's job runnable now, by any worker of its queue (recording a new job id if one was made)."""
    new_job_id = await make_runnable(pool, task)
    if new_job_id is not None:
        await store.update(task.id, lambda t: msgspec.structs.replace(t, job_id=new_job_id))

"""Execution leases: one execution per task at a time, and recovery when a worker dies.

A worker starting a task takes a fencing token (``INCR``) and a lease key
holding it (``SET NX PX``), and puts the task in the running set. While the
crew runs, the worker refreshes the lease every third of its length. If the
worker dies (SIGKILL, lost machine), the lease lapses and any worker's reaper
puts the task back on its queue at once: recovery takes at most one lease
length plus one reaper pass, instead of arq's job timeout.
"""

from __future__ import annotations

import time

import msgspec
import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from jobs.kinds import KINDS
from jobs.models import Task
from jobs.queue import JOB_FUNCTION, queue_key
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


async def reap(pool: ArqRedis, store: TaskStore) -> list[str]:
    """Re-queue every running task whose lease has lapsed; returns their ids."""
    reclaimed: list[str] = []
    for raw in await pool.smembers(RUNNING_SET):  # type: ignore[misc]
        task_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        if await pool.exists(lease_key(task_id)):
            continue
        task = await store.update(task_id, _back_to_queue)
        if task is None or task.status != "queued" or task.stage != _RECOVERED_STAGE:
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


_RECOVERED_STAGE = "re-queued: its worker stopped responding"


def _back_to_queue(task: Task) -> Task:
    # Only a task still running (lease lapsed) goes back; anything else was settled meanwhile.
    if task.status != "running":
        return task
    return task.to("queued", stage=_RECOVERED_STAGE, run_token=task.run_token)


async def requeue_job(pool: ArqRedis, store: TaskStore, task: Task) -> None:
    """Make the task's arq job runnable now, by any worker of its queue.

    arq keeps a started job in its queue with an in-progress marker that only
    expires after the job timeout; clearing the marker and resetting the score
    lets the next poll take it. If arq already dropped the job, a new one is
    enqueued.
    """
    job_id = task.job_id or task.id
    queue = queue_key(KINDS[task.kind].queue)
    if await pool.exists(job_key_prefix + job_id):
        async with pool.pipeline(transaction=True) as pipe:
            pipe.delete(in_progress_key_prefix + job_id)
            pipe.zadd(queue, {job_id: int(time.time() * 1000)})
            await pipe.execute()
        return
    new_job_id = f"{task.id}:{int(time.time() * 1000)}"
    await store.update(task.id, lambda t: msgspec.structs.replace(t, job_id=new_job_id))
    await pool.enqueue_job(JOB_FUNCTION, task.id, _job_id=new_job_id, _queue_name=queue)

"""Putting tasks on arq queues, and the Redis keys queues and workers share."""

from __future__ import annotations

import time

import msgspec
from arq.connections import ArqRedis

from jobs.kinds import KINDS, QUEUES, Queue
from jobs.models import Task

JOB_FUNCTION = "run_task"

# Jobs carry only the task id; msgpack keeps pickle out of the queue.
serialize = msgspec.msgpack.encode
deserialize = msgspec.msgpack.decode


def queue_key(queue: Queue) -> str:
    return f"agentfarm:queue:{queue}"


def workers_key(queue: Queue) -> str:
    """Sorted set of worker ids scored by their last heartbeat (epoch seconds)."""
    return f"agentfarm:workers:{queue}"


class EnqueueFailed(Exception):
    """arq refused the job (its id is taken); the task was not queued."""


async def enqueue(pool: ArqRedis, task: Task) -> None:
    """Queue the job that runs ``task``; its arq job id is ``task.job_id`` (the task id at first)."""
    queue = KINDS[task.kind].queue
    job_id = task.job_id or task.id
    job = await pool.enqueue_job(JOB_FUNCTION, task.id, _job_id=job_id, _queue_name=queue_key(queue))
    if job is None:
        raise EnqueueFailed(f"a job with id {job_id} already exists")


async def live_workers(pool: ArqRedis, queue: Queue, heartbeat_s: float) -> int:
    """Workers of ``queue`` whose heartbeat is fresh (missed fewer than three beats)."""
    return int(await pool.zcount(workers_key(queue), time.time() - 3 * heartbeat_s, "+inf"))


async def queue_depth(pool: ArqRedis, queue: Queue) -> int:
    """Jobs waiting or running on ``queue`` (arq keeps running jobs in the set)."""
    return int(await pool.zcard(queue_key(queue)))


async def queue_snapshot(pool: ArqRedis, heartbeat_s: float) -> dict[str, tuple[int, int]]:
    """Per queue: (depth, live workers) — what readiness and the metrics page both report."""
    return {q: (await queue_depth(pool, q), await live_workers(pool, q, heartbeat_s)) for q in QUEUES}

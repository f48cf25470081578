"""The dead-letter list: failed tasks an operator can inspect and re-queue.

Every task that ends ``failed`` (retries exhausted, or a permanent error such
as a rejected API key) is listed here until its state expires, so a fixed
configuration can be followed by a re-queue instead of a lost job.
"""

from __future__ import annotations

import time
import uuid

from jobs.models import InvalidTransition, Task
from jobs.queue import QueueRedis, enqueue
from jobs.store import TaskStore

DLQ_KEY = "agentfarm:dead-letters"


class NotDeadLettered(Exception):
    """The task is not in the dead-letter list (unknown, expired, or not failed)."""


async def add(pool: QueueRedis, task_id: str) -> None:
    await pool.zadd(DLQ_KEY, {task_id: time.time()})


async def entries(pool: QueueRedis, store: TaskStore, limit: int = 100) -> list[Task]:
    """Dead-lettered tasks, most recent failure first; expired tasks are dropped from the list."""
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await pool.zrevrange(DLQ_KEY, 0, limit - 1)]
    tasks: list[Task] = []
    for task_id in ids:
        task = await store.get(task_id)
        if task is None or task.status != "failed":
            await pool.zrem(DLQ_KEY, task_id)
            continue
        tasks.append(task)
    return tasks


async def requeue(pool: QueueRedis, store: TaskStore, task_id: str) -> Task:
    """Give a dead-lettered task a fresh start on its queue."""
    if await pool.zscore(DLQ_KEY, task_id) is None:
        raise NotDeadLettered(task_id)
    job_id = f"{task_id}:requeue-{uuid.uuid4().hex[:8]}"
    try:
        task = await store.update(task_id, lambda t: t.requeued(job_id))
    except InvalidTransition:
        await pool.zrem(DLQ_KEY, task_id)
        raise NotDeadLettered(task_id) from None
    if task is None:
        await pool.zrem(DLQ_KEY, task_id)
        raise NotDeadLettered(task_id)
    await enqueue(pool, task)
    await pool.zrem(DLQ_KEY, task_id)
    return task

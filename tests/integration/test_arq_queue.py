"""arq's queue behaviour that leases and readiness rely on, on the real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix

from jobs import queue
from jobs.connections import redis_client
from jobs.models import Task
from jobs.settings import load_settings
from tests.conftest import service_env
from tests.support.redis_server import RedisServer


def _task(task_id: str) -> Task:
    now = datetime.now(UTC)
    return Task(id=task_id, kind="research", tenant="acme", params={}, created_at=now, updated_at=now)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own: a worker process another test started must not take its jobs."""
    server = RedisServer(appendonly=False)
    server.start()
    yield server
    server.close()


@pytest.fixture
async def pool(private_redis: RedisServer) -> object:
    settings = load_settings(service_env(private_redis.url, None), env_file=None)
    client = redis_client(settings.redis)
    await client.delete(queue.queue_key("research"))
    yield client
    await client.delete(queue.queue_key("research"))
    await client.aclose()


async def test_a_started_job_stays_in_the_queue_until_made_runnable(pool: queue.QueueRedis) -> None:
    """A running job keeps its place in the queue set with an in-progress marker (``queue_depth`` counts it);
    ``make_runnable`` clears the marker and resets its score so any worker takes it at once."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def job(ctx: dict[str, object], task_id: str) -> None:
        started.set()
        await release.wait()

    task = _task("arq-contract-1")
    await queue.enqueue(pool, task)
    assert await pool.exists(job_key_prefix + task.id)
    with pytest.raises(queue.EnqueueFailed):
        await queue.enqueue(pool, task)  # a job id is taken once
    worker = queue.make_worker(
        pool, "research", job, ctx={}, max_jobs=1, poll_delay_s=0.05, job_timeout_s=60, burst=False
    )
    run = asyncio.ensure_future(worker.async_run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await pool.exists(in_progress_key_prefix + task.id)
        assert await queue.queue_depth(pool, "research") == 1
        score_before = await pool.zscore(queue.queue_key("research"), task.id)
        await asyncio.sleep(0.01)
        assert await queue.make_runnable(pool, task) is None  # the job still exists: no new id
        assert not await pool.exists(in_progress_key_prefix + task.id)
        assert await pool.zscore(queue.queue_key("research"), task.id) > score_before
    finally:
        queue.cancel_running([worker])
        await asyncio.gather(run, return_exceptions=True)
        await queue.finish(worker)
        assert not await pool.exists(worker.health_check_key)
    assert await pool.ping()  # finishing a worker leaves the shared pool open


async def test_a_dropped_job_is_enqueued_again_under_a_new_id(pool: queue.QueueRedis) -> None:
    task = _task("arq-contract-2")
    new_id = await queue.make_runnable(pool, task)
    assert new_id is not None and new_id.startswith(task.id + ":")
    assert await pool.zscore(queue.queue_key("research"), new_id) is not None


async def test_an_idle_worker_is_woken_by_an_enqueue_and_by_its_own_deferred_retry(pool: queue.QueueRedis) -> None:
    """No polling while idle: the enqueue's wake-up starts the job well before the 2 s backstop poll, and a job
    the worker deferred (``RetryLater``) runs again when it is due, not at the next backstop."""
    runs: list[float] = []
    second = asyncio.Event()

    async def job(ctx: dict[str, object], task_id: str) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise queue.RetryLater(defer=0.3)
        second.set()

    worker = queue.make_worker(
        pool, "research", job, ctx={}, max_jobs=1, poll_delay_s=0.05, job_timeout_s=60, burst=False
    )
    run = asyncio.ensure_future(worker.async_run())
    try:
        await asyncio.sleep(0.5)  # the worker has polled once and waits
        enqueued = time.monotonic()
        await queue.enqueue(pool, _task("arq-wake-1"))
        await asyncio.wait_for(second.wait(), 10)
        assert runs[0] - enqueued < 1.0, "the enqueue did not wake the idle worker"
        assert 0.29 < runs[1] - runs[0] < 1.5, "the deferred retry did not run when due"
    finally:
        queue.cancel_running([worker])
        await asyncio.gather(run, return_exceptions=True)
        await queue.finish(worker)

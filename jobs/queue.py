"""The queue: the one module that knows arq.

Everything the service relies on about arq lives here — its client class, its
``Worker`` and the attributes we drive, its job and in-progress keys, that a
started job keeps its place in the queue's sorted set, and how a job is made
runnable again. ``tests/unit/test_arq_contract.py`` fails loudly if an arq
upgrade changes any of it; ``tests/unit/test_boundaries.py`` checks that no
other module imports arq.

arq is in maintenance mode and has no Redis Cluster support, so this module is
kept small: the rest of the service talks of tasks, queues and workers.

What we take from arq as it is: enqueueing with a job id (a duplicate id is
refused), polling with ``max_jobs``, deferred retries (``Retry``), the job
timeout as a backstop, one shared ``redis_pool`` for every queue of a process.
What we do not use, and why:

- **arq's try counter.** Attempts are counted on the task (a lease lapse,
  a hand-back and a retry are different things); ``max_tries`` is set high
  enough that arq never ends a job on its own.
- **arq's signal handling** (``handle_signals``/``job_completion_wait``): it
  registers one handler per ``Worker`` (a process serving several queues would
  keep only the last) and has no "second signal skips the grace". The
  worker drains itself and then asks each ``Worker`` to stop (``stop_picking``,
  ``cancel_running``).
- **arq's result keys** (``keep_result=0``): the task record is the result.
- **arq's polling loop.** arq finds jobs by ``ZRANGEBYSCORE`` every ``poll_delay``
  (20 commands/s per idle worker at 50 ms, and up to 50 ms of pickup latency).
  ``PushWorker`` keeps arq's poll iteration (``_poll_iteration``: the read,
  the in-progress claim, the job start) but runs it only when there may be
  work: when an enqueue wakes it (every enqueue here ``PUBLISH``es on the
  queue's wake channel, in the same MULTI as the job), when one of its jobs
  ends (a slot is free), when a job it deferred (``RetryLater``) is due, and
  otherwise every ``_IDLE_POLL_S`` as a backstop (a wake-up lost with a
  dropped connection, a job deferred by another worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from arq import Retry, Worker, func

__all__ = ["PushWorker", "QueueRedis", "RetryLater", "Worker"]
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from jobs.kinds import KINDS, QUEUES, Queue
from jobs.models import Task

log = structlog.get_logger(__name__)

JOB_FUNCTION = "run_task"
WEBHOOK_FUNCTION = "deliver_webhook"
# A delivery is one HTTP request: arq's in-progress marker (timeout + 10 s) frees it soon after a worker dies.
_WEBHOOK_JOB_TIMEOUT_S = 60

# arq's client: a redis.asyncio.Redis that can also enqueue jobs.
QueueRedis = ArqRedis
# Raised by a job to run it again after ``defer`` seconds.
RetryLater = Retry

# arq's own try counter must never end a task: attempts are counted on the task itself.
_ARQ_MAX_TRIES = 10_000
# How long a task's arq job lives (arq's own default for enqueue_job: expires_extra_ms, one day).
_TASK_JOB_TTL_S = 86_400
# An idle worker's backstop poll when nothing woke it: 1 command every 2 s, plus the wait itself.
_IDLE_POLL_S = 2.0

# Jobs carry only the task id; msgpack keeps pickle out of the queue.
serialize = msgspec.msgpack.encode
deserialize = msgspec.msgpack.decode


def queue_key(queue: Queue) -> str:
    return f"agentfarm:queue:{queue}"


def wake_channel(queue_name: str) -> str:
    """The channel an enqueue publishes on to wake the idle workers of a queue (by its arq queue name)."""
    return f"{queue_name}:wake"


def workers_key(queue: Queue) -> str:
    """Sorted set of worker ids scored by their last heartbeat (epoch seconds)."""
    return f"agentfarm:workers:{queue}"


class EnqueueFailed(Exception):
    """arq refused the job (its id is taken); the task was not queued."""


async def enqueue(pool: QueueRedis, task: Task) -> None:
    """Queue the job that runs ``task``; its arq job id is ``task.job_id`` (the task id at first)."""
    queue = KINDS[task.kind].queue
    job_id = task.job_id or task.id
    job = await pool.enqueue_job(JOB_FUNCTION, task.id, _job_id=job_id, _queue_name=queue_key(queue))
    if job is None:
        raise EnqueueFailed(f"a job with id {job_id} already exists")
    await pool.publish(wake_channel(queue_key(queue)), job_id)


def enqueue_new_in(pipe: Pipeline, task: Task) -> None:
    """Queue a new task's job (its id is the fresh task id) inside the caller's MULTI, with the task's state.

    One round trip for the state and the job, and all or nothing: no task claims to be queued without its
    job. No duplicate check is needed (``enqueue`` refuses a taken id; a new task's id is a fresh uuid4).
    """
    job_id = task.job_id or task.id
    enqueue_in(pipe, JOB_FUNCTION, (task.id,), job_id=job_id, queue=KINDS[task.kind].queue, ttl_s=_TASK_JOB_TTL_S)


def enqueue_in(pipe: Pipeline, function: str, args: tuple[str, ...], *, job_id: str, queue: Queue, ttl_s: int) -> None:
    """Queue a job inside the caller's MULTI, exactly as ``ArqRedis.enqueue_job`` writes it.

    So a job can be made durable in the same transaction as the state that calls
    for it (a webhook delivery with the task's terminal state). Unlike
    ``enqueue_job`` it does not refuse a taken id: ids here are unique per event.
    """
    now = timestamp_ms()
    job = serialize_job(function, args, {}, None, now, serializer=serialize)
    pipe.psetex(job_key_prefix + job_id, ttl_s * 1000, job)
    pipe.zadd(queue_key(queue), {job_id: now})
    pipe.publish(wake_channel(queue_key(queue)), job_id)


async def make_runnable(pool: QueueRedis, task: Task) -> str | None:
    """Make the task's job runnable now, by any worker of its queue; the new job id if one was enqueued.

    arq keeps a started job in its queue with an in-progress marker that only
    expires after the job timeout; clearing the marker and resetting the score
    lets the next poll take it. If arq already dropped the job, a new one is
    enqueued under a new id (returned, for the task to record).
    """
    job_id = task.job_id or task.id
    queue = queue_key(KINDS[task.kind].queue)
    if await pool.exists(job_key_prefix + job_id):
        async with pool.pipeline(transaction=True) as pipe:
            pipe.delete(in_progress_key_prefix + job_id)
            pipe.zadd(queue, {job_id: int(time.time() * 1000)})
            pipe.publish(wake_channel(queue), job_id)
            await pipe.execute()
        return None
    new_job_id = f"{task.id}:{int(time.time() * 1000)}"
    await pool.enqueue_job(JOB_FUNCTION, task.id, _job_id=new_job_id, _queue_name=queue)
    await pool.publish(wake_channel(queue), new_job_id)
    return new_job_id


async def live_workers(pool: QueueRedis, queue: Queue, heartbeat_s: float) -> int:
    """Workers of ``queue`` whose heartbeat is fresh (missed fewer than three beats)."""
    return int(await pool.zcount(workers_key(queue), time.time() - 3 * heartbeat_s, "+inf"))


async def queue_depth(pool: QueueRedis, queue: Queue) -> int:
    """Jobs waiting or running on ``queue`` (arq keeps a started job in the set until it ends)."""
    return int(await pool.zcard(queue_key(queue)))


async def queue_snapshot(pool: QueueRedis, heartbeat_s: float) -> dict[str, tuple[int, int]]:
    """Per queue: (depth, live workers) — what readiness and the metrics page both report."""
    return {q: (await queue_depth(pool, q), await live_workers(pool, q, heartbeat_s)) for q in QUEUES}


class _Deferrals:
    """When the earliest job a worker's functions deferred (``RetryLater``) is due, on the monotonic clock."""

    def __init__(self) -> None:
        self.due = math.inf

    def wrap(self, job: WorkerCoroutine) -> WorkerCoroutine:
        async def noting_deferrals(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
            try:
                return await job(ctx, *args, **kwargs)
            except Retry as retry:
                # arq re-scores the job at (its clock once this returns) + defer: be due just after that.
                self.due = min(self.due, time.monotonic() + (retry.defer_score or 0) / 1000 + 0.01)
                raise

        noting_deferrals.__qualname__ = noting_deferrals.__name__ = getattr(job, "__name__", "job")
        return noting_deferrals


class PushWorker(Worker):
    """arq's ``Worker`` that waits to be woken instead of polling every ``poll_delay`` (the module's docstring).

    Each pass is arq's own ``_poll_iteration``; between passes the worker sleeps until an enqueue publishes on
    the queue's wake channel, one of its jobs ends, a job it deferred is due, or ``_IDLE_POLL_S`` passes.
    """

    def __init__(self, *args: Any, deferrals: _Deferrals, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferrals = deferrals
        self._woken = asyncio.Event()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._woken.set()  # a slot is free: take the next waiting job now

    async def main(self) -> None:
        # arq's Worker.main, but for its loop; the pool is always given (make_worker), never created here.
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        listener = asyncio.ensure_future(self._listen())
        try:
            while True:
                self._woken.clear()
                await self._poll_iteration()
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self.pool.zcard(self.queue_name) == 0:
                        await asyncio.gather(*self.tasks.values())
                        return
                await self._sleep()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def _sleep(self) -> None:
        timeout = _IDLE_POLL_S
        if self.burst:
            timeout = min(timeout, self.poll_delay_s)  # burst runs (tests, one-offs) end as soon as arq's would
        due = self._deferrals.due
        if due < math.inf:
            timeout = min(timeout, max(0.0, due - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        if self._deferrals.due <= time.monotonic():
            self._deferrals.due = math.inf  # the pass that follows takes it

    async def _listen(self) -> None:
        """Set ``_woken`` on every message of the queue's wake channel, for as long as the worker runs."""
        while True:
            pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(wake_channel(self.queue_name))
                self._woken.set()  # (re)subscribed: a wake-up may have been missed meanwhile
                async for _ in pubsub.listen():
                    self._woken.set()
            except (RedisError, OSError) as exc:
                log.warning("queue_wake_channel_lost", queue=self.queue_name, error=str(exc), retry_in_s=1)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(1)  # the backstop poll goes on meanwhile


def make_worker(
    pool: QueueRedis,
    queue: Queue,
    job: WorkerCoroutine,
    *,
    deliver: WorkerCoroutine | None = None,
    ctx: dict[str, Any],
    max_jobs: int,
    poll_delay_s: float,
    job_timeout_s: float,
    burst: bool,
) -> Worker:
    """An arq worker taking ``queue``'s jobs (tasks, and webhook deliveries) on the process's shared pool.

    Signals are the caller's.
    """
    deferrals = _Deferrals()
    functions = [func(deferrals.wrap(job), name=JOB_FUNCTION, timeout=job_timeout_s, max_tries=_ARQ_MAX_TRIES)]
    if deliver is not None:
        deliveries = deferrals.wrap(deliver)
        functions.append(
            func(deliveries, name=WEBHOOK_FUNCTION, timeout=_WEBHOOK_JOB_TIMEOUT_S, max_tries=_ARQ_MAX_TRIES)
        )
    return PushWorker(
        deferrals=deferrals,
        functions=functions,
        queue_name=queue_key(queue),
        redis_pool=pool,
        burst=burst,
        handle_signals=False,
        max_jobs=max_jobs,
        poll_delay=poll_delay_s,
        # Running jobs stay in arq's queue set; read past them so idle workers never starve.
        queue_read_limit=max(1000, max_jobs * 50),
        keep_result=0,
        ctx=ctx,
        job_serializer=serialize,
        job_deserializer=deserialize,
        log_results=False,
    )


def job_id_of(ctx: dict[str, Any], default: str) -> str:
    """The id of the arq job a job function is running as."""
    return str(ctx.get("job_id", default))


def stop_picking(workers: Sequence[Worker]) -> None:
    """Take no new jobs; running ones go on."""
    for worker in workers:
        worker.allow_pick_jobs = False


def cancel_running(workers: Sequence[Worker]) -> None:
    """Cancel the running jobs and end the workers' polling (``async_run`` returns)."""
    for worker in workers:
        for job in list(worker.tasks.values()):
            if not job.done():
                job.cancel()
        if worker.main_task is not None:
            worker.main_task.cancel()


async def finish(worker: Worker) -> None:
    """Wait for a stopped worker's jobs to end, and drop its health key; the shared pool stays open.

    (``Worker.close`` would also close the pool every queue of the process shares.)
    """
    # A cancelled or failed job has settled its task itself: its outcome is not needed here.
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    await worker.pool.delete(worker.health_check_key)

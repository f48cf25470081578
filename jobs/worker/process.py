"""The worker process: an arq worker per queue on one shared runtime, and how it shuts down.

Shutdown: on SIGTERM/SIGINT stop taking jobs, let running crews finish for up
to ``worker.shutdown_grace_s``, then cancel the rest, which hands their tasks
back to the queue (their crews' next LLM calls are refused). A second signal
skips the grace period. (Why this is ours and not arq's: ``jobs/queue.py``.)
"""

from __future__ import annotations

import asyncio
import signal
import time

import structlog
from redis.exceptions import RedisError

from crews.executor import crewai_listeners_off
from jobs import queue as arq_queue
from jobs.kinds import KINDS, Queue
from jobs.queue import Worker
from jobs.settings import Settings
from jobs.worker.execution import run_task
from jobs.worker.runtime import WorkerRuntime
from jobs.worker.webhooks import deliver_webhook

log = structlog.get_logger(__name__)


def _worker(settings: Settings, queue: Queue, runtime: WorkerRuntime, *, burst: bool) -> Worker:
    kinds = [k for k, spec in KINDS.items() if spec.queue == queue]
    # A backstop only: executions enforce the kinds' own limits and hand tasks back themselves.
    timeout = max(settings.policy(k).timeout_s for k in kinds) + settings.worker.shutdown_grace_s + 60
    return arq_queue.make_worker(
        runtime.redis,
        queue,
        run_task,
        deliver=deliver_webhook,
        ctx={"runtime": runtime},
        max_jobs=settings.worker.concurrency,
        poll_delay_s=settings.worker.poll_delay_s,
        job_timeout_s=timeout,
        burst=burst,
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
        arq_queue.stop_picking(self.workers)

    def cancel_all(self) -> None:
        self.stopping = True
        arq_queue.cancel_running(self.workers)


async def serve(
    settings: Settings, queues: tuple[Queue, ...], *, burst: bool = False, handle_signals: bool = True
) -> None:
    """Run workers for ``queues`` until SIGTERM/SIGINT (or, with ``burst``, until the queues are empty).

    Embedded in another program's event loop (``handle_signals=False``), it
    installs no signal handlers and stops when its task is cancelled.

    Shutdown: stop taking jobs, let running crews finish for up to
    ``worker_shutdown_grace_s``, then hand the rest back to the queue (the
    crews' next LLM calls are refused). A second signal skips the grace period.
    """
    runtime = WorkerRuntime(settings, queues)
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

    if handle_signals:
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
        with crewai_listeners_off():  # nothing of ours listens; each event would cost a thread hand-off
            await asyncio.gather(*(supervisor.run_queue(q) for q in queues))
    finally:
        supervisor.stopping = True
        arq_queue.cancel_running(supervisor.workers)
        for worker in supervisor.workers:
            try:
                await arq_queue.finish(worker)
            except (RedisError, OSError):
                log.warning("worker_close_failed", exc_info=True)
        await runtime.stop()
        log.info("worker_stopped", worker_id=runtime.worker_id)

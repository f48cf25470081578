"""What a running crew reports back: progress and usage written to the task, the LLM rate limit before calls.

The crew runs in a thread; it calls the observer there. Writes are coalesced
(while one is in flight only the latest progress and usage are kept, and pages
read are queued as ``source`` events) and made on the worker's event loop,
fenced by the execution's token. What is still pending when the run ends is
left to the final write, which carries the latest usage itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from crews.control import BudgetExceeded
from crews.results import Usage
from jobs import metrics
from jobs.events import SourceRead
from jobs.models import Task
from jobs.ratelimit import SyncRateLimiter
from jobs.settings import RateLimit
from jobs.worker.runtime import WorkerRuntime
from jobs.worker.stopping import Execution

log = structlog.get_logger(__name__)


class ExecutionObserver:
    """The crew's ``RunObserver``: stop points and the LLM rate limit before calls, progress and usage after."""

    def __init__(self, runtime: WorkerRuntime, execution: Execution, task: Task) -> None:
        self._runtime = runtime
        self._execution = execution
        self._kind = task.kind
        self._tenant = task.tenant
        self._budget = task.max_tokens  # over all attempts; 0: none
        self._spent_before = task.usage_before.tokens  # by the task's earlier attempts
        self._largest_call = 0  # tokens of this run's largest call so far: the bound on the next one
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None
        self._pending_usage: Usage | None = None
        self._pending_sources: list[SourceRead] = []
        self._writer: asyncio.Task[None] | None = None
        self.usage = Usage()  # this execution's cumulative usage so far

    def stop_point(self) -> None:
        self._execution.check()

    def before_llm_call(self) -> None:
        self.stop_point()
        self._check_budget()
        llm = self._runtime.settings.llm
        if llm.rpm:
            wait_for_llm_slot(self._runtime.llm_limiter, llm.model_name, llm.rpm, self.stop_point)

    def _check_budget(self) -> None:
        """No call that could take the task past its budget: spent so far plus the largest call yet."""
        if not self._budget:
            return
        with self._lock:
            spent = self._spent_before + self.usage.tokens
            bound = self._largest_call
        if spent >= self._budget or spent + bound > self._budget:
            raise BudgetExceeded(spent, self._budget)

    def on_progress(self, progress: int, stage: str) -> None:
        if self._budget:
            with self._lock:
                spent = self._spent_before + self.usage.tokens
            stage = f"{stage} ({spent:,} of {self._budget:,} tokens)"
        with self._lock:
            self._pending = (progress, stage)
        self._wake_writer()

    def on_usage(self, usage: Usage) -> None:
        """In the crew's thread, as calls complete (also after the execution stopped waiting for it)."""
        with self._lock:
            if not usage.newer_than(self.usage):
                return
            spent = usage.minus(self.usage)
            self.usage = usage
            if spent.llm_calls:
                self._largest_call = max(self._largest_call, -(-spent.tokens // spent.llm_calls))
            self._pending_usage = usage
        metrics.llm_usage(
            usage.model or self._runtime.settings.llm.model_name,
            self._kind,
            self._tenant,
            calls=spent.llm_calls,
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
            cost_usd=spent.cost_usd,
        )
        # While the run goes on, the next progress write (before the next call) or the final write
        # carries it; once stopped, nothing else will: write it now.
        if self._execution.stopping:
            self._wake_writer()

    def on_source(self, url: str, title: str) -> None:
        """In the crew's thread: a page read for the report, appended as a ``source`` event."""
        with self._lock:
            self._pending_sources.append(SourceRead(url=url, title=title))
        self._wake_writer()

    async def before_settle(self) -> None:
        """The run is over: wait for a write in flight; drop pending progress and usage (the final write has both).

        Pages read stay pending and are written: they are events of their own, not part of the final write.
        """
        with self._lock:
            self._pending = None
            self._pending_usage = None
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def _wake_writer(self) -> None:
        # An abandoned crew can outlive its worker's loop: then nothing can be written any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ensure_writer)

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        # Coalesced: while a write is in flight only the latest progress and usage are kept.
        token = self._execution.token
        while True:
            with self._lock:
                pending, self._pending = self._pending, None
                usage, self._pending_usage = self._pending_usage, None
                read, self._pending_sources = tuple(self._pending_sources), []
            if pending is None and usage is None and not read:
                return

            def advance(task: Task, pending: tuple[int, str] | None = pending, usage: Usage | None = usage) -> Task:
                if task.run_token != token:
                    return task  # fenced: another execution's task now
                if pending is not None:
                    task = task.with_progress(*pending)  # only while running
                if usage is not None:
                    task = task.with_usage(usage, run_token=token)  # also once cancelled or failed
                return task

            def sources(task: Task, read: tuple[SourceRead, ...] = read) -> tuple[SourceRead, ...]:
                return read if task.run_token == token and task.status == "running" else ()

            try:
                await self._runtime.store.update(self._execution.task_id, advance, sources=sources)
            except (RedisError, OSError):
                log.warning("progress_write_failed", task_id=self._execution.task_id, exc_info=True)


def wait_for_llm_slot(limiter: SyncRateLimiter, model: str, rpm: int, stop_point: Callable[[], None]) -> None:
    """Block the crew's thread until the shared per-model LLM rate limit allows a call (or the run stops)."""
    while True:
        # No bursts: calls are spread evenly, as a provider's per-minute quota expects.
        decision = limiter.hit(f"llm:{model}", RateLimit(rpm, 60), burst=1)
        if decision.allowed:
            return
        time.sleep(min(decision.retry_after_s, 0.5))
        stop_point()

"""Carries a crew's progress from its thread to the task state in Redis."""

from __future__ import annotations

import asyncio
import threading

import structlog

from crews.results import Usage
from jobs.models import Task
from jobs.store import TaskStore

log = structlog.get_logger(__name__)


class ProgressReporter:
    """A crew's ``RunObserver``: called from the crew thread, writes on the event loop.

    Updates are coalesced: while one write is in flight, only the latest
    progress is kept, so a fast crew never queues up stale writes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, store: TaskStore, task_id: str) -> None:
        self._loop = loop
        self._store = store
        self._task_id = task_id
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.usage = Usage()

    def on_progress(self, progress: int, stage: str) -> None:
        with self._lock:
            self._pending = (progress, stage)
        self._loop.call_soon_threadsafe(self._ensure_writer)

    def on_usage(self, usage: Usage) -> None:
        self.usage = usage

    async def flush(self) -> None:
        """Wait until every reported step is written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        while True:
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is None:
                return
            progress, stage = pending

            def advance(task: Task, progress: int = progress, stage: str = stage) -> Task:
                return task.with_progress(progress, stage)

            try:
                await self._store.update(self._task_id, advance)
            except Exception:  # progress is best effort; the final state is written elsewhere
                log.warning("progress_write_failed", task_id=self._task_id, exc_info=True)

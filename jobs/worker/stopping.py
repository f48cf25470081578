"""Stopping an execution: the flag its crew checks at every stop point, and the task's cancel marker.

Crews cannot be killed: to stop one, the execution sets a flag that the crew
checks at its next stop point (before every LLM call, search or page fetch:
``CrewStopped``), and stops waiting for it. A stop point also looks for the
task's cancel marker in Redis, so a cancel is seen by the crew the moment the
API has answered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

import structlog
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from crews.control import CrewStopped, StopReason
from jobs.store import cancel_key

log = structlog.get_logger(__name__)


class Execution:
    """A running execution as its worker sees it.

    ``stop`` is called from the event loop; ``check`` (the crew's stop point) from the crew's thread.
    """

    def __init__(self, task_id: str, token: int, cancel_requested: Callable[[], bool] | None = None) -> None:
        self.task_id = task_id
        self.token = token
        self.stop_reason: StopReason | None = None
        self.stopped = asyncio.Event()
        self._flag = threading.Event()  # read by the crew's thread
        self._cancel_requested = cancel_requested
        self._loop = asyncio.get_running_loop()

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._flag.set()
            self.stopped.set()

    @property
    def stopping(self) -> bool:
        """Whether this execution was asked to stop (safe from any thread)."""
        return self._flag.is_set()

    def check(self) -> None:
        """In the crew's thread: stop here if asked to, or if the task was cancelled (its marker in Redis)."""
        if self._flag.is_set():
            raise CrewStopped(self.stop_reason or "cancelled")
        if self._cancel_requested is not None and self._cancel_requested():
            self._flag.set()  # later stop points need no round trip
            # Wake the execution too, in case the cancel's wake-up message did not reach this worker
            # (a closed loop means the worker is shutting down: nothing left to wake).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.stop, "cancelled")
            raise CrewStopped("cancelled")


def cancel_marker_set(redis: SyncRedis, task_id: str) -> bool:
    """Whether the task's cancel marker exists: one cheap EXISTS from the crew's thread.

    A Redis error does not stop the crew (the in-process flag, set by the
    cancel's wake-up or the lease watch, still applies).
    """
    try:
        return bool(redis.exists(cancel_key(task_id)))
    except (RedisError, OSError) as exc:
        log.warning("cancel_check_failed", task_id=task_id, error=str(exc))
        return False

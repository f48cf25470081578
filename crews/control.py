"""How a running crew is told to stop, and how its failures are classified.

Crews run in threads that cannot be killed. A crew stops cooperatively at its
*stop points*: before every LLM call the runner asks its observer, and any
other outbound step (a search, a page fetch) calls ``stop_point()`` first. A
stop point raises ``CrewStopped`` when the run was cancelled, timed out or
handed back. It is a ``BaseException`` on purpose: crewai swallows
``Exception`` raised by its hooks (it fails open), so only a
``BaseException`` reliably unwinds the crew before the call leaves the process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

StopReason = Literal["cancelled", "soft_timeout", "timeout", "shutdown", "superseded", "budget_exceeded"]


class CrewStopped(BaseException):
    """Raised inside a crew's thread to stop it before its next LLM call."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"crew stopped: {reason}")
        self.reason: StopReason = reason


_stop_check: ContextVar[Callable[[], None] | None] = ContextVar("agentfarm_stop_check", default=None)


def stop_point() -> None:
    """Stop here if this crew's run was asked to stop: call it right before any outbound step.

    Runs in the crew's thread (or a context copied from it). It consults the
    task's stop state where it is kept (for a worker: an in-process flag and
    the task's cancel marker in Redis), so a cancel that has returned is seen
    here at once. Outside a run it does nothing.
    """
    check = _stop_check.get()
    if check is not None:
        check()


@contextmanager
def stop_points(check: Callable[[], None]) -> Iterator[None]:
    """Make ``check`` (which raises ``CrewStopped``) what ``stop_point()`` calls within this block."""
    token = _stop_check.set(check)
    try:
        yield
    finally:
        _stop_check.reset(token)


class BudgetExceeded(CrewStopped):
    """Raised before an LLM call that would take the task past its token budget: the call is not made."""

    def __init__(self, spent: int, budget: int) -> None:
        super().__init__("budget_exceeded")
        self.spent = spent
        self.budget = budget

    def __str__(self) -> str:
        return (
            f"the task's token budget of {self.budget:,} tokens (max_tokens) would be exceeded by its next "
            f"LLM call: {self.spent:,} tokens spent"
        )

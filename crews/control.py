"""How a running crew is told to stop, and how its failures are classified.

Crews run in threads that cannot be killed. A crew stops cooperatively: before
every LLM call the runner asks its observer, and the observer raises
``CrewStopped`` when the run was cancelled, timed out or handed back. It is a
``BaseException`` on purpose: crewai swallows ``Exception`` raised by its
hooks (it fails open), so only a ``BaseException`` reliably unwinds the crew
before the call reaches the LLM.
"""

from __future__ import annotations

from typing import Literal

StopReason = Literal["cancelled", "soft_timeout", "timeout", "shutdown", "superseded"]


class CrewStopped(BaseException):
    """Raised inside a crew's thread to stop it before its next LLM call."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"crew stopped: {reason}")
        self.reason: StopReason = reason

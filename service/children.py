"""How the CLI's supervisors start their children (``serve --workers``, ``worker --processes``, ``agentfarm dev``)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def own_session() -> Callable[[], None]:
    """A ``preexec_fn``: the child gets a session of its own and SIGTERM when its parent dies.

    Its own session: a terminal's Ctrl-C reaches only the parent, which forwards it
    once. The parent-death signal (Linux): no child outlives a killed supervisor.
    Safe as ``preexec_fn`` only while the parent runs no threads.
    """
    prctl: Callable[[int, int], int] | None = None
    if sys.platform == "linux":
        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup

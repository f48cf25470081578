"""What the sources stage counts, for whoever listens (the worker's Prometheus metrics).

``crews`` must not import ``jobs``: the metrics module subscribes here instead.
Listeners run in the crew's thread (or its event loop) and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Listeners:
    search: list[Callable[[str, str], None]] = field(default_factory=list)  # (backend, outcome)
    fetch_error: list[Callable[[str], None]] = field(default_factory=list)  # (reason)
    citations_removed: list[Callable[[str, int], None]] = field(default_factory=list)  # (kind, count)


LISTENERS = Listeners()


def search_done(backend: str, outcome: str) -> None:
    for listener in LISTENERS.search:
        listener(backend, outcome)


def fetch_failed(reason: str) -> None:
    for listener in LISTENERS.fetch_error:
        listener(reason)


def citations_removed(kind: str, count: int) -> None:
    if count:
        for listener in LISTENERS.citations_removed:
            listener(kind, count)

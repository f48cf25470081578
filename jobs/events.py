"""A task's event log: one event per change, in a per-task Redis stream, numbered without gaps.

``TaskStore`` appends the events of a write in the same MULTI as the write
itself, so a crash between the two cannot lose or invent an event. The
stream entry id is ``{seq}-0``: the per-task sequence number is the stream's
own order, and "everything after event N" is one ``XRANGE``/``XREAD`` from
``N-0``. The task record keeps the last number (``Task.seq``) and the stream
expires with the task.

Event types: a status change is named after the new status (``queued``,
``running``, ``retrying``, ``completed``, ``failed``, ``cancelled``; its
``reason`` says why); ``progress`` (progress or stage moved), ``usage``
(tokens spent, nothing else changed), ``source`` (a page read for the report).
Every event carries the task's status, attempt, progress, stage and usage after it, so a
client can render any single event on its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from crews.results import Usage
from jobs.models import TERMINAL, Reason, Status, Task, TaskError, utcnow

EventType = Literal[
    "queued", "running", "retrying", "completed", "failed", "cancelled", "progress", "usage", "source"
]  # fmt: skip
TERMINAL_EVENTS: frozenset[str] = frozenset(TERMINAL)


class SourceRead(msgspec.Struct, frozen=True, kw_only=True):
    """A page read for the report (``source`` events)."""

    url: str
    title: str = ""


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a task's event log, as stored and as sent (the SSE ``data``)."""

    seq: int
    type: EventType
    status: Status
    reason: Reason
    progress: int
    stage: str
    usage: Usage
    at: datetime
    attempt: int = 0  # the run it belongs to: progress never decreases within one (events stored before it: 0)
    error: TaskError | None = None
    source: SourceRead | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskEvent)


def events_key(task_id: str) -> str:
    return f"agentfarm:events:{task_id}"


def entry_id(seq: int) -> str:
    """The stream entry id of event ``seq`` (1, 2, …)."""
    return f"{seq}-0"


def seq_of(entry: bytes | str) -> int:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.partition("-")[0])


def encode(event: TaskEvent) -> bytes:
    return _encoder.encode(event)


def decode(raw: bytes) -> TaskEvent:
    return _decoder.decode(raw)


def _snapshot(task: Task, seq: int, kind: EventType, source: SourceRead | None = None) -> TaskEvent:
    return TaskEvent(
        seq=seq,
        type=kind,
        status=task.status,
        reason=task.reason,
        progress=task.progress,
        stage=task.stage,
        usage=task.usage,
        at=utcnow(),
        attempt=task.attempt,
        error=task.error if task.status == "failed" else None,
        source=source,
    )


def created(task: Task) -> TaskEvent:
    """The first event of a task."""
    return _snapshot(task, 1, task.status)


def change_type(before: Task, after: Task) -> EventType | None:
    """What kind of event the write ``before -> after`` is, or ``None`` when nothing a client sees changed."""
    if after.status != before.status or after.reason != before.reason or after.run_token != before.run_token:
        return after.status
    if after.progress != before.progress or after.stage != before.stage:
        return "progress"
    if after.usage != before.usage:
        return "usage"
    return None


def events_of(before: Task, after: Task, sources: tuple[SourceRead, ...] = ()) -> list[TaskEvent]:
    """The events a write appends, numbered after ``before.seq``."""
    seq = before.seq
    events: list[TaskEvent] = []
    kind = change_type(before, after)
    if kind is not None:
        seq += 1
        events.append(_snapshot(after, seq, kind))
    for source in sources:
        seq += 1
        events.append(_snapshot(after, seq, "source", source))
    return events

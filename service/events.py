"""``GET /v1/tasks/{id}/events``: a task's event log as Server-Sent Events, replayed then followed live.

Any API replica serves any task's stream: the log is in Redis
(``jobs/events.py``). The stream replays every event after ``Last-Event-ID``
(header, or ``?last_event_id=``), then follows with a blocking ``XREAD`` (no
polling), sends a comment every ``events_keepalive_s`` so proxies keep the
connection, and ends after the terminal event. When the server shuts down,
open streams end with a comment saying so, and the client reconnects with its
last id to another replica, missing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from litestar import Controller, Litestar, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from jobs.events import TaskEvent, encode
from jobs.settings import Settings
from jobs.store import TaskStore, task_key
from service.auth import Caller
from service.openapi import error_responses
from service.tasks import owned_task

log = structlog.get_logger(__name__)

Store = NamedDependency[TaskStore]
Req = Request[Caller, Any, Any]

EVENTS_DESCRIPTION = (
    "A stream of `text/event-stream` events. Each has `id:` (the task's event number: 1, 2, … without gaps),"
    " `event:` (`queued`, `running`, `retrying`, `completed`, `failed`, `cancelled` for status changes, with a"
    " `reason`; `progress`, `usage`, `source`) and JSON `data`: a `TaskEvent` with the task's status, reason,"
    " attempt, progress, stage and usage after the event. The stream ends after `completed`, `failed` or `cancelled`;"
    " a comment line every 15 s keeps it open. Reconnect with `Last-Event-ID` to get exactly the rest."
)


def closing_event(app: Litestar) -> asyncio.Event:
    """Set when the server begins to shut down: open streams say so and end."""
    event: asyncio.Event | None = getattr(app.state, "streams_closing", None)
    if event is None:
        event = asyncio.Event()
        app.state.streams_closing = event
    return event


def _last_id(header: str, query: int) -> int:
    """Where to resume (0: from the start); the schema checks both; a client sending both gets the later."""
    return max(query, int(header) if header else 0)


class _Comment(ServerSentEventMessage):
    """A comment line alone (Litestar's comment message also sends an empty ``data:`` field)."""

    def encode(self) -> bytes:
        return f": {self.comment}\r\n\r\n".encode()


def _message(event: TaskEvent) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=encode(event).decode(), event=event.type, id=str(event.seq))


async def _follow(
    store: TaskStore, task_id: str, after: int, keepalive_s: float, closing: asyncio.Event
) -> AsyncIterator[Any]:
    seq = after
    while True:  # replay, a page at a time
        batch = await store.events_after(task_id, seq)
        for event in batch:
            yield _message(event)
            seq = event.seq
            if event.terminal:
                return
        if len(batch) < 500:
            break
    task = await store.get(task_id)
    if task is None or (task.finished and task.seq <= seq):
        return
    waiting_for_close = asyncio.ensure_future(closing.wait())
    try:
        while True:
            reading = asyncio.ensure_future(store.wait_events(task_id, seq, keepalive_s))
            await asyncio.wait({reading, waiting_for_close}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                yield _Comment(comment="server shutting down: reconnect with Last-Event-ID")
                return
            batch = reading.result()
            if not batch:
                if not await store.redis.exists(task_key(task_id)):
                    return  # expired while followed
                yield _Comment(comment="keep-alive")
                continue
            for event in batch:
                yield _message(event)
                seq = event.seq
                if event.terminal:
                    return
    finally:
        waiting_for_close.cancel()


class EventsController(Controller):
    path = "/v1/tasks"
    tags = ("tasks",)

    @get(
        "/{task_id:str}/events",
        summary="Follow a task's events",
        media_type="text/event-stream",
        responses=error_responses(400, 401, 404, 503),
        response_description=EVENTS_DESCRIPTION,
    )
    async def task_events(
        self,
        request: Req,
        task_id: FromPath[str],
        store: Store,
        settings: NamedDependency[Settings],
        last_event_id_header: Annotated[
            str,
            HeaderParameter(
                name="Last-Event-ID",
                description="Resume after this event (its `id`).",
                pattern=r"^[0-9]{0,16}$",
                required=False,
            ),
        ] = "",
        last_event_id: Annotated[
            int,
            QueryParameter(ge=0, le=2**53, description="Resume after this event, for clients that cannot set headers."),
        ] = 0,
    ) -> ServerSentEvent:
        """Replays the task's events after `Last-Event-ID`, then follows them live until the task ends."""
        after = _last_id(last_event_id_header, last_event_id)
        await owned_task(store, task_id, request.user.tenant)
        closing = closing_event(request.app)
        return ServerSentEvent(
            _follow(store, task_id, after, settings.api.events_keepalive_s, closing),
            headers={"Cache-Control": "no-store"},
        )

"""Reading a Server-Sent Events stream the way a client does: raw lines kept, events parsed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    id: int
    type: str
    data: dict[str, Any]


@dataclass
class Stream:
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    status: int = 0
    ended: bool = False  # the server closed the stream (rather than we stopped reading)


async def read_events(
    url: str, headers: dict[str, str], *, last_event_id: int | None = None, stop_after: int | None = None,
    timeout_s: float = 60,
) -> Stream:  # fmt: skip
    """Read the stream until the server ends it, or until ``stop_after`` events (then disconnect)."""
    stream = Stream()
    sent = dict(headers)
    if last_event_id is not None:
        sent["Last-Event-ID"] = str(last_event_id)
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(timeout_s)) as client,
        client.stream("GET", url, headers=sent) as response,
    ):
        stream.status = response.status_code
        if response.status_code != 200:
            await response.aread()
            return stream
        current: dict[str, str] = {}
        async for line in response.aiter_lines():
            stream.raw.append(line)
            if line.startswith(":"):
                stream.comments.append(line[1:].strip())
            elif line == "":
                if current:
                    stream.events.append(Event(int(current["id"]), current["event"], json.loads(current["data"])))
                    current = {}
                    if stop_after is not None and len(stream.events) >= stop_after:
                        return stream
            else:
                name, _, value = line.partition(":")
                current[name] = value[1:] if value.startswith(" ") else value
        stream.ended = True
    return stream

"""Task state in Redis: one key per task (with a TTL) and a per-tenant index.

Every write of a task goes through ``update``, an optimistic transaction
(WATCH/MULTI), so progress from a worker and a status change from elsewhere
never overwrite each other. The same MULTI appends the write's events to the
task's event log (``jobs/events.py``).
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from jobs import events, webhooks
from jobs.events import SourceRead, TaskEvent
from jobs.kinds import KindName as Kind
from jobs.models import Status, Task

_PREFIX = "agentfarm"
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Task)


def task_key(task_id: str) -> str:
    return f"{_PREFIX}:task:{task_id}"


def tenant_index_key(tenant: str) -> str:
    return f"{_PREFIX}:tenant:{tenant}:tasks"


# A cancel leaves a marker that a running crew checks before every LLM call (and search or
# page fetch), and wakes the task's worker on this channel so its execution settles at once.
CANCEL_CHANNEL = f"{_PREFIX}:cancels"


def cancel_key(task_id: str) -> str:
    return f"{_PREFIX}:cancel:{task_id}"


class InvalidCursor(ValueError):
    """A list cursor that this API did not hand out (or that was altered)."""


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Task]
    next_cursor: str | None


def _encode_cursor(score: float, task_id: str) -> str:
    # repr() of a float round-trips exactly: a cursor must name the boundary's exact
    # score, or members sharing its millisecond are skipped.
    return base64.urlsafe_b64encode(f"{score!r}:{task_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, task_id = raw.partition(":")
        value = float(score)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursor(cursor) from exc
    if not task_id or not math.isfinite(value):
        raise InvalidCursor(cursor)
    return value, task_id


class TaskStore:
    """Reads and writes tasks; shared by the API and the workers."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def create(self, task: Task, also: Callable[[Pipeline], None] | None = None) -> None:
        """Write a new task, its first event and its index entry in one MULTI; ``also`` adds to that MULTI
        (the submit path queues the task's job there: one round trip, all or nothing)."""
        score = task.created_at.timestamp() * 1000
        index = tenant_index_key(task.tenant)
        first = events.created(task)
        task = msgspec.structs.replace(task, seq=first.seq)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(task_key(task.id), _encoder.encode(task), ex=self.ttl_s)
            pipe.xadd(events.events_key(task.id), {"e": events.encode(first)}, id=events.entry_id(first.seq))
            pipe.expire(events.events_key(task.id), self.ttl_s)
            pipe.zadd(index, {task.id: score})
            # Tasks expire with their key; drop index entries older than any live task.
            pipe.zremrangebyscore(index, "-inf", (time.time() - self.ttl_s) * 1000)
            pipe.expire(index, self.ttl_s)
            if also is not None:
                also(pipe)
            await pipe.execute()

    async def get(self, task_id: str) -> Task | None:
        raw = await self.redis.get(task_key(task_id))
        return None if raw is None else _decoder.decode(raw)

    async def get_many(self, task_ids: list[str]) -> list[Task | None]:
        raws = await self.redis.mget([task_key(i) for i in task_ids]) if task_ids else []
        return [None if raw is None else _decoder.decode(raw) for raw in raws]

    async def get_for(self, task_id: str, tenant: str) -> Task | None:
        """The task if it exists and belongs to ``tenant``; otherwise ``None`` (never leak which)."""
        task = await self.get(task_id)
        return task if task is not None and task.tenant == tenant else None

    async def update(
        self,
        task_id: str,
        change: Callable[[Task], Task],
        also: Callable[[Pipeline, Task], None] | None = None,
        sources: Callable[[Task], tuple[SourceRead, ...]] | None = None,
    ) -> Task | None:
        """Apply ``change`` atomically, with its events; ``None`` when the task no longer exists.

        ``change`` may be called more than once (after a lost race), so it must
        be a pure function of the task it is given. ``also`` queues further
        commands into the same MULTI as the write (given the new state);
        ``sources`` gives the pages read to append as ``source`` events, from the task as read
        (so a fenced writer appends none); pure, like ``change``.
        """
        key = task_key(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    before = _decoder.decode(raw)
                    after = change(before)
                    read = sources(before) if sources is not None else ()
                    appended = events.events_of(before, after, read) if after is not before or read else []
                    if after is before and not appended:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return before
                    if appended:
                        after = msgspec.structs.replace(after, seq=appended[-1].seq)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    ends = after.finished and not before.finished
                    pipe.set(key, _encoder.encode(after), keepttl=True)
                    self._append(pipe, task_id, appended, ends=ends)
                    if ends and after.webhook_url:
                        webhooks.schedule(pipe, after, self.ttl_s)  # durable with the state that calls for it
                    if also is not None:
                        also(pipe, after)
                    await pipe.execute()
                except WatchError:
                    continue  # someone else wrote the task meanwhile: re-read and re-apply
                return after

    def _append(self, pipe: Pipeline, task_id: str, appended: list[TaskEvent], *, ends: bool) -> None:
        if not appended:
            return
        stream = events.events_key(task_id)
        for event in appended:
            pipe.xadd(stream, {"e": events.encode(event)}, id=events.entry_id(event.seq))
        # The log expires with its task: its TTL is set at create and XADD keeps it. The write that ends
        # the task makes sure (NX keeps a TTL already set), so a log that lost its TTL cannot outlive it.
        if ends:
            pipe.expire(stream, self.ttl_s, nx=True)

    async def events_after(self, task_id: str, seq: int, count: int = 500) -> list[TaskEvent]:
        """The task's events numbered above ``seq``, oldest first (at most ``count``)."""
        rows = await self.redis.xrange(events.events_key(task_id), f"({events.entry_id(seq)}", "+", count=count)
        return [events.decode(fields[b"e"]) for _, fields in rows]

    async def wait_events(self, task_id: str, seq: int, block_s: float) -> list[TaskEvent]:
        """Events numbered above ``seq``, waiting up to ``block_s`` for the first (a blocking ``XREAD``)."""
        key = events.events_key(task_id)
        rows = await self.redis.xread({key: events.entry_id(seq)}, count=500, block=int(block_s * 1000))
        return [events.decode(fields[b"e"]) for _, entries in rows for _, fields in entries]

    async def cancel(self, task_id: str) -> Task | None:
        """Cancel a task (``Task.cancelled``); ``None`` when it does not exist.

        The cancelled state, the task's cancel marker (``cancel_key``, as long-lived
        as a task) and the wake-up on ``CANCEL_CHANNEL`` go in one MULTI: once this
        returns, no crew of the task passes its next stop point.
        Raises ``AlreadyFinished`` for a finished task.
        """

        def mark(pipe: Pipeline, cancelled: Task) -> None:
            pipe.set(cancel_key(task_id), cancelled.run_token, ex=self.ttl_s)
            pipe.publish(CANCEL_CHANNEL, task_id)

        return await self.update(task_id, Task.cancelled, also=mark)

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        cursor: str | None = None,
        status: Status | None = None,
        kind: Kind | None = None,
    ) -> Page:
        """The tenant's tasks, newest first, ``limit`` at a time.

        ``next_cursor`` is handed out only when at least one more matching task
        exists, so a last full page does not lead to an empty one.
        """
        index = tenant_index_key(tenant)
        bound: tuple[float, str] | None = _decode_cursor(cursor) if cursor else None
        items: list[Task] = []
        last: tuple[float, str] | None = None
        batch = max(limit * 2, 50)
        while True:
            top: float | str = "+inf" if bound is None else bound[0]
            rows = await self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=batch, withscores=True)
            ids: list[str] = []
            scores: list[float] = []
            for member, score in rows:
                task_id = member.decode() if isinstance(member, bytes) else str(member)
                # Equal scores come in reverse lexical order: skip up to and including the bound.
                if bound is not None and score == bound[0] and task_id >= bound[1]:
                    continue
                ids.append(task_id)
                scores.append(score)
            raws = await self.redis.mget([task_key(i) for i in ids]) if ids else []
            for task_id, score, raw in zip(ids, scores, raws, strict=True):
                bound = (score, task_id)
                if raw is None:
                    continue
                task = _decoder.decode(raw)
                if (status is None or task.status == status) and (kind is None or task.kind == kind):
                    if len(items) == limit:  # one more exists: the page ends at the last item taken
                        assert last is not None
                        return Page(items, _encode_cursor(*last))
                    items.append(task)
                    last = bound
            if len(rows) < batch:
                return Page(items, None)
            if not ids:
                batch *= 2  # a run of equal scores longer than a batch: read further

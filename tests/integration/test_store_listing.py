"""Listing a tenant's tasks page by page, on the real Redis, at the store's own level."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from jobs.models import Task
from jobs.store import TaskStore
from tests.support.redis_server import RedisServer

TENANT = "listing-tenant"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[TaskStore]:
    redis = Redis.from_url(redis_server.url)
    for key in [k async for k in redis.scan_iter(f"agentfarm:tenant:{TENANT}:*")]:
        await redis.delete(key)
    yield TaskStore(redis, ttl_s=3600)
    await redis.aclose()


def _task(created_at: datetime, kind: str = "research") -> Task:
    return Task(
        id=str(uuid.uuid4()),
        kind=kind,  # type: ignore[arg-type]
        tenant=TENANT,
        params={"topic": "listing"},
        created_at=created_at,
        updated_at=created_at,
    )


async def _walk(store: TaskStore, limit: int, **filters: str) -> tuple[list[str], int, list[int]]:
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        page = await store.list(TENANT, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        seen += [t.id for t in page.items]
        sizes.append(len(page.items))
        cursor = page.next_cursor
        if cursor is None:
            return seen, len(sizes), sizes


class TestCursorPages:
    async def test_burst_within_one_millisecond_is_listed_whole(self, store: TaskStore) -> None:
        """Hundreds of tasks created in the same milliseconds are all listed once, newest first, across pages."""
        base = datetime.now(UTC)
        # Three tasks per millisecond, fractional scores: page boundaries fall inside a millisecond.
        tasks = [_task(base + timedelta(microseconds=300 * i + 7)) for i in range(300)]
        for task in tasks:
            await store.create(task)

        seen, _, sizes = await _walk(store, limit=7)

        expected = [t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)]
        assert len(seen) == len(set(seen)) == 300
        assert seen == expected
        assert all(size > 0 for size in sizes)

    async def test_last_full_page_has_no_cursor(self, store: TaskStore) -> None:
        """When the tasks fill the last page exactly, it hands out no cursor to an empty page."""
        base = datetime.now(UTC)
        for i in range(6):
            await store.create(_task(base + timedelta(milliseconds=i)))

        _, pages, sizes = await _walk(store, limit=3)

        assert pages == 2
        assert sizes == [3, 3]

    async def test_filtered_walk_has_no_empty_last_page(self, store: TaskStore) -> None:
        """With a kind filter, pages hold only matches and the last one ends the walk."""
        base = datetime.now(UTC)
        kinds = ["swot" if i % 3 == 0 else "research" for i in range(30)]
        created = [_task(base + timedelta(microseconds=100 * i), kind) for i, kind in enumerate(kinds)]
        for task in created:
            await store.create(task)

        seen, _, sizes = await _walk(store, limit=5, kind="swot")

        assert sorted(seen) == sorted(t.id for t in created if t.kind == "swot")
        assert sizes == [5, 5]

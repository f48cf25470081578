"""Waiting for tasks over the HTTP API, the way a client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from litestar.testing import AsyncTestClient

TERMINAL = {"completed", "failed", "cancelled"}


async def wait_finished(
    client: AsyncTestClient,  # type: ignore[type-arg]
    task_id: str,
    headers: dict[str, str],
    timeout_s: float = 60,
    interval_s: float = 0.05,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll a task until it is finished; return its final state and every state seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await client.get(f"/v1/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        seen.append(task)
        if task["status"] in TERMINAL:
            return task, seen
        await asyncio.sleep(interval_s)
    raise AssertionError(f"task {task_id} not finished after {timeout_s} s; last state {seen[-1] if seen else None}")


async def eventually(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return predicate()

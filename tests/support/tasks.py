"""Submitting and reading tasks through the in-process API client (Litestar's test client), as tests do."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.conftest import ACME

Client = AsyncTestClient  # type: ignore[type-arg]


async def submit(api: Client, path: str, body: dict[str, Any], headers: dict[str, str] = ACME) -> str:
    """Submit one task to ``POST /v1/tasks/{path}`` and return its id (202 expected)."""
    response = await api.post(f"/v1/tasks/{path}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


async def get(api: Client, task_id: str, headers: dict[str, str] = ACME) -> dict[str, Any]:
    """The task as its owner sees it (200 expected)."""
    response = await api.get(f"/v1/tasks/{task_id}", headers=headers)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task

"""The worker's execution path in this process (no worker subprocess): how a run ends, and what it logs.

Each test builds the worker's own ``WorkerRuntime`` on the real test Redis and
calls the arq job function directly, so the state it leaves in Redis and the
log lines it writes (``structlog.testing.capture_logs``) are checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from jobs import dlq, idempotency
from jobs.kinds import KINDS
from jobs.models import Task
from jobs.settings import Settings
from jobs.worker.execution import run_task
from jobs.worker.runtime import WorkerRuntime
from tests.conftest import ACME
from tests.support.llm_server import ScriptedLLM
from tests.support.polling import eventually

pytestmark = pytest.mark.usefixtures("clean_state")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[WorkerRuntime]:
    runtime = WorkerRuntime(settings, ("research", "specialized"))
    await runtime.start()
    yield runtime
    await runtime.stop()
    await asyncio.to_thread(runtime.pool.shutdown, wait=True)  # crew threads end here, not at interpreter exit


def new_task(task_id: str, **changes: Any) -> Task:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": task_id,
        "kind": "swot",
        "tenant": "acme",
        "params": {"company": f"In-process {task_id}"},
        "max_attempts": 3,
        "created_at": now,
        "updated_at": now,
        "job_id": task_id,
    }
    return Task(**{**fields, **changes})


def finished_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] in ("task_finished", "task_stopped")]


class TestHowARunEnds:
    async def test_a_completed_run_logs_one_task_finished_line(
        self, runtime: WorkerRuntime, llm_server: ScriptedLLM
    ) -> None:
        """A run that completes stores its report and logs `task_finished` once, with its usage."""
        await runtime.store.create(new_task("exec-complete"))
        with capture_logs() as logs:
            await run_task({"runtime": runtime, "job_id": "exec-complete"}, "exec-complete")

        task = await runtime.store.get("exec-complete")
        assert task is not None and task.status == "completed" and task.result is not None
        [line] = finished_lines(logs)
        assert line["status"] == "completed" and line["log_level"] == "info"
        assert line["llm_calls"] == task.usage.llm_calls == len(llm_server.received("In-process exec-complete"))

    async def test_a_task_started_max_attempts_times_fails_as_attempts_exhausted(
        self, runtime: WorkerRuntime, llm_server: ScriptedLLM
    ) -> None:
        """A task whose runs keep dying is not started again past max_attempts: failed, dead-lettered, logged."""
        await runtime.store.create(new_task("exec-exhausted", attempt=3, status="queued"))
        with capture_logs() as logs:
            await run_task({"runtime": runtime, "job_id": "exec-exhausted"}, "exec-exhausted")

        task = await runtime.store.get("exec-exhausted")
        assert task is not None and task.status == "failed"
        assert task.reason == "attempts_exhausted"
        assert task.error is not None and task.error.type == "attempts_exhausted"
        assert "started 3 times" in task.error.message
        assert [t.id for t in await dlq.entries(runtime.redis, runtime.store)] == ["exec-exhausted"]
        assert not llm_server.received("exec-exhausted"), "no crew ran"
        [line] = finished_lines(logs)
        assert (line["status"], line["error_type"], line["log_level"]) == ("failed", "attempts_exhausted", "warning")

    async def test_a_superseded_run_stops_and_never_writes_over_the_new_one(
        self, runtime: WorkerRuntime, llm_server: ScriptedLLM
    ) -> None:
        """When another execution takes the task over, this one stops at its next call and changes nothing.

        The lease watch (every lease/3 = 0.5 s here) notices the take-over during the first, slower call.
        """
        llm_server.default_delay_s = 1.2
        await runtime.store.create(new_task("exec-superseded"))
        with capture_logs() as logs:
            run = asyncio.create_task(run_task({"runtime": runtime, "job_id": "exec-superseded"}, "exec-superseded"))
            assert await eventually(lambda: bool(llm_server.received("exec-superseded")), timeout_s=20)
            taken = await runtime.store.update(
                "exec-superseded",
                lambda t: t.started(run_token=t.run_token + 1000, worker_id="other", job_id="j2"),
            )
            await asyncio.wait_for(run, 20)

        assert taken is not None
        task = await runtime.store.get("exec-superseded")
        assert task is not None
        assert (task.status, task.run_token, task.worker_id, task.attempt) == (
            "running",
            taken.run_token,
            "other",
            2,
        ), "the new execution's task, untouched"
        assert task.usage.llm_calls == 0, "the old run's tokens are not written into the new run's usage"
        assert len(llm_server.received("exec-superseded")) == 1, "no further call after the take-over"
        [line] = finished_lines(logs)
        assert (line["event"], line["reason"]) == ("task_stopped", "superseded")


class TestIdempotencyInFlight:
    async def test_a_key_whose_first_request_is_still_running_is_a_409(self, api: Any, settings: Settings) -> None:
        """The same Idempotency-Key while the first request has claimed it but not yet stored its task: 409."""
        body = {"company": "In Flight Corp"}
        params = msgspec.convert(body, KINDS["swot"].params)
        runtime = WorkerRuntime(settings, ())
        claim = idempotency.Claim(fingerprint=idempotency.fingerprint("swot", params), task_id="not-stored-yet")
        assert await idempotency.claim(runtime.redis, "acme", "key-in-flight", claim, 60) is None
        await runtime.redis.aclose()

        response = await api.post("/v1/tasks/swot", json=body, headers={**ACME, "Idempotency-Key": "key-in-flight"})

        assert response.status_code == 409, response.text
        assert "still being processed" in response.json()["detail"]
        assert response.json()["status"] == 409

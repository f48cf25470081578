"""Stopping a running crew: a cancel reaches it at once, and the tokens it spent are still recorded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis import Redis
from redis.client import PubSub

from crews.control import CrewStopped, stop_point, stop_points
from jobs.settings import Settings
from jobs.store import CANCEL_CHANNEL, cancel_key
from tests.conftest import ACME, SCRIPTED_MODEL, WorkerProcess
from tests.support.cluster import Cluster
from tests.support.llm_server import ScriptedLLM
from tests.support.polling import eventually, wait_finished
from tests.support.redis_server import RedisServer
from tests.support.tasks import get, submit

pytestmark = pytest.mark.slow

Client = AsyncTestClient  # type: ignore[type-arg]

LLM_LATENCY_S = 2.0


async def usage_settles(api: Client, task_id: str, llm: ScriptedLLM, topic: str, timeout_s: float) -> dict[str, Any]:
    """The task once no call of its crew is in flight and its usage counts every call that completed."""
    deadline = time.monotonic() + timeout_s
    while True:
        task = await get(api, task_id)
        billed = llm.completed(containing=topic)
        if llm.in_flight(containing=topic) == 0 and task["usage"]["llm_calls"] == len(billed):
            return task
        if time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.05)


def next_message(pubsub: PubSub, timeout_s: float) -> bytes | None:
    """The data of the next published message, or ``None`` if none comes within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None:
            data: bytes = message["data"]
            return data
    return None


def worker_events(worker: WorkerProcess, task_id: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines about one task."""
    events: list[dict[str, Any]] = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("task_id") == task_id:
            events.append(event)
    return events


def final_events(worker: WorkerProcess, task_id: str) -> list[dict[str, Any]]:
    return [e for e in worker_events(worker, task_id) if e.get("event") in {"task_finished", "task_stopped"}]


def assert_usage_is_what_was_billed(task: dict[str, Any], llm: ScriptedLLM, topic: str) -> None:
    billed = llm.completed(containing=topic)
    assert billed, "no call completed: nothing to check"
    assert task["usage"] == {
        "llm_calls": len(billed),
        "prompt_tokens": sum(b.prompt_tokens for b in billed),
        "completion_tokens": sum(b.completion_tokens for b in billed),
        "model": SCRIPTED_MODEL,
        "cost_usd": None,
        "searches": 0,
        "pages_read": 0,
    }


class TestPromptCancel:
    async def test_no_llm_call_starts_after_the_cancel_returned(
        self, make_cluster: Callable[..., Cluster], llm_server: ScriptedLLM
    ) -> None:
        """Cancelled during call 3 of 4 (2 s LLM latency, production lease): no call starts after the cancel returns."""
        # The production lease (15 s): the lease watch ticks every 5 s, so only a prompt path stops the crew.
        cluster = make_cluster(AGENTFARM_WORKER_LEASE_S="15")
        worker = cluster.start_worker()
        llm_server.default_delay_s = LLM_LATENCY_S
        topic = "promptly cancelled topic"
        redis = Redis.from_url(cluster.redis.url)
        try:
            async with cluster.api() as api:
                task_id = await submit(api, "research", {"topic": topic, "depth": "comprehensive"})
                assert await eventually(lambda: len(llm_server.received(containing=topic)) >= 3, timeout_s=30)
                response = await api.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)
                cancelled_at = time.time()
                cancel_returned = time.monotonic()
                assert response.status_code == 200 and response.json()["status"] == "cancelled"
                assert llm_server.in_flight(containing=topic) == 1, "call 3 was in flight at the cancel"

                # The execution settles (stops waiting, releases the lease) without waiting for the call.
                settled = await eventually(lambda: not redis.exists(f"agentfarm:lease:{task_id}"), timeout_s=15)
                settle_s = time.monotonic() - cancel_returned
                # The crew's thread ends once call 3 returns: its next call is refused before it starts.
                crew_ended = await eventually(
                    lambda: any(e.get("event") == "crew_ended" for e in worker_events(worker, task_id)),
                    timeout_s=LLM_LATENCY_S * 3,
                )
                final = await usage_settles(api, task_id, llm_server, topic, timeout_s=10)
        finally:
            redis.close()
        print(f"\ncancel -> execution settled: {settle_s * 1000:.0f} ms")
        late = [round(r.at - cancelled_at, 3) for r in llm_server.received(containing=topic) if r.at > cancelled_at]
        assert late == [], f"LLM calls started after the cancel returned (s after it): {late}"
        assert len(llm_server.received(containing=topic)) == 3
        assert final["status"] == "cancelled" and final["result"] is None
        assert settled and settle_s < 1.0, f"the execution took {settle_s:.2f} s to settle"
        ends = final_events(worker, task_id)
        assert [e["status"] for e in ends] == ["cancelled"], ends
        assert crew_ended, "the crew's thread did not end after its in-flight call"
        ended = next(e for e in worker_events(worker, task_id) if e.get("event") == "crew_ended")
        assert ended["ended"] == "stopped: cancelled" and ended["llm_calls"] == 3
        assert_usage_is_what_was_billed(final, llm_server, topic)


class TestCancelMarker:
    async def test_cancel_writes_state_marker_and_wake_up_together(
        self, api: Client, redis_server: RedisServer, settings: Settings
    ) -> None:
        """The cancel response implies the cancel marker (with the task's TTL) exists and the workers were woken."""
        redis = Redis.from_url(redis_server.url)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CANCEL_CHANNEL)
            task_id = await submit(api, "swot", {"company": "Marker Corp"})  # no worker here: it stays queued
            assert not redis.exists(cancel_key(task_id))
            response = await api.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)
            assert response.status_code == 200 and response.json()["status"] == "cancelled"
            assert redis.exists(cancel_key(task_id))
            assert settings.task_ttl_s - 5 < redis.ttl(cancel_key(task_id)) <= settings.task_ttl_s
            assert next_message(pubsub, timeout_s=2) == task_id.encode()
            again = await api.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)
            assert again.status_code == 409
            assert next_message(pubsub, timeout_s=0.3) is None, "a refused cancel wakes no one"
        finally:
            pubsub.close()
            redis.close()

    def test_stop_point_runs_the_bound_check_and_is_a_no_op_outside_a_run(self) -> None:
        """`stop_point()` (for searches, page fetches) raises what the run's check raises; outside a run nothing."""
        stop_point()  # no run bound: nothing happens

        def cancelled() -> None:
            raise CrewStopped("cancelled")

        with stop_points(cancelled), pytest.raises(CrewStopped) as stopped:
            stop_point()
        assert stopped.value.reason == "cancelled"
        stop_point()  # unbound again after the run


class TestUsageOnStop:
    async def test_cancelled_task_keeps_the_usage_of_its_completed_calls(
        self, make_cluster: Callable[..., Cluster], llm_server: ScriptedLLM
    ) -> None:
        """A task cancelled between calls shows the calls and tokens the LLM billed before the cancel."""
        cluster = make_cluster()
        llm_server.default_delay_s = 0.5
        topic = "usage of a cancelled topic"
        async with cluster.worker_in_process(), cluster.api() as api:
            task_id = await submit(api, "research", {"topic": topic, "depth": "comprehensive"})
            assert await eventually(lambda: len(llm_server.completed(containing=topic)) >= 2, timeout_s=30)
            response = await api.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)
            assert response.status_code == 200
            final = await usage_settles(api, task_id, llm_server, topic, timeout_s=10)
        assert final["status"] == "cancelled"
        assert_usage_is_what_was_billed(final, llm_server, topic)

    @pytest.mark.parametrize("limit", ["soft", "hard"])
    async def test_timed_out_task_keeps_the_usage_of_its_completed_calls(
        self, limit: str, make_cluster: Callable[..., Cluster], llm_server: ScriptedLLM
    ) -> None:
        """A task failed by its soft or hard time limit shows every call the LLM billed, the one in flight included."""
        hard_s = "4.5" if limit == "hard" else "30"
        cluster = make_cluster(AGENTFARM_RESEARCH_SOFT_TIMEOUT_S="4.5", AGENTFARM_RESEARCH_TIMEOUT_S=hard_s)
        llm_server.default_delay_s = LLM_LATENCY_S  # a call is in flight at the 4.5 s limit (call 1 ends near 3 s)
        topic = f"usage of a {limit} timed out topic"
        async with cluster.worker_in_process(), cluster.api() as api:
            task_id = await submit(api, "research", {"topic": topic, "depth": "comprehensive"})
            failed, _ = await wait_finished(api, task_id, ACME)
            assert failed["status"] == "failed" and failed["error"]["type"] == "timeout"
            in_flight_at_failure = llm_server.in_flight(containing=topic)
            # With a hard limit the thread is abandoned mid-call; the call's usage still arrives when it returns.
            final = await usage_settles(api, task_id, llm_server, topic, timeout_s=10)
        assert final["status"] == "failed"
        # Soft: the crew stops after the call in flight; hard: the task fails while it is still in flight.
        assert in_flight_at_failure == (1 if limit == "hard" else 0)
        assert len(llm_server.completed(containing=topic)) >= 2
        assert len(llm_server.received(containing=topic)) == len(llm_server.completed(containing=topic))
        assert_usage_is_what_was_billed(final, llm_server, topic)

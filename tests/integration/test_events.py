"""The event stream: every change once, in order, resumable, from any API process, across a worker crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.conftest import ACME, BETA, ApiProcess
from tests.support.cluster import Cluster
from tests.support.llm_server import ScriptedLLM
from tests.support.polling import eventually
from tests.support.sse import Event, read_events

pytestmark = pytest.mark.slow


def submit(api: ApiProcess, topic: str) -> str:
    response = httpx.post(f"{api.url}/v1/tasks/research", json={"topic": topic}, headers=ACME, timeout=10)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def assert_one_run_to_the_end(events: list[Event], terminal: str = "completed") -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "ids must be 1, 2, 3 … without gaps"
    assert events[0].type == "queued" and events[0].data["reason"] == "submitted"
    assert [e.type for e in events].count(terminal) == 1 and events[-1].type == terminal
    assert all(e.type not in {"completed", "failed", "cancelled"} for e in events[:-1])
    assert all(e.data["seq"] == e.id for e in events)


@pytest.fixture
def stack(cluster: Cluster, tmp_path: Path) -> Any:
    apis = [ApiProcess(cluster.env, tmp_path / "api-1.log"), ApiProcess(cluster.env, tmp_path / "api-2.log")]
    yield cluster, apis
    for api in apis:
        api.stop()


class TestStream:
    async def test_replay_resume_and_a_second_api_process_give_the_same_gap_free_sequence(
        self, stack: Any, llm_server: ScriptedLLM
    ) -> None:
        cluster, (first_api, second_api) = stack
        llm_server.default_delay_s = 0.4
        cluster.start_worker()
        task_id = submit(first_api, "event stream resume")
        url = f"{first_api.url}/v1/tasks/{task_id}/events"

        head = await read_events(url, ACME, stop_after=3)  # then the connection drops
        assert head.status == 200 and not head.ended
        rest = await read_events(url, ACME, last_event_id=head.events[-1].id)
        assert rest.ended
        followed = head.events + rest.events
        assert_one_run_to_the_end(followed)
        assert {"running", "progress"} <= {e.type for e in followed}
        assert followed[-1].data["progress"] == 100 and followed[-1].data["usage"]["llm_calls"] >= 1

        started = time.monotonic()
        replayed = await read_events(f"{second_api.url}/v1/tasks/{task_id}/events", ACME)
        assert replayed.ended and time.monotonic() - started < 2, "a finished task's stream replays and ends at once"
        assert [(e.id, e.type, e.data) for e in replayed.events] == [(e.id, e.type, e.data) for e in followed]
        query = await read_events(f"{second_api.url}/v1/tasks/{task_id}/events?last_event_id=2", ACME)
        assert [e.id for e in query.events] == [e.id for e in followed[2:]]
        assert (await read_events(url, ACME, last_event_id=followed[-1].id)).events == []

        print("\n".join([*head.raw, "# (connection dropped; reconnect with Last-Event-ID)", *rest.raw]))

    async def test_auth_tenant_and_bad_ids(self, stack: Any) -> None:
        _, (api, _) = stack
        task_id = submit(api, "events auth")  # no worker: it stays queued
        url = f"{api.url}/v1/tasks/{task_id}/events"
        assert (await read_events(url, {})).status == 401
        assert (await read_events(url, BETA)).status == 404
        assert (
            await read_events(f"{api.url}/v1/tasks/00000000-0000-4000-8000-000000000000/events", ACME)
        ).status == 404
        async with httpx.AsyncClient(timeout=5) as client:
            bad = await client.get(url, headers={**ACME, "Last-Event-ID": "abc"})
            assert bad.status_code == 400 and "Last-Event-ID" in bad.text
            assert (await client.get(f"{url}?last_event_id=-1", headers=ACME)).status_code == 400

    async def test_an_idle_stream_is_kept_alive_and_a_disconnect_frees_its_redis_reader(
        self, cluster: Cluster, tmp_path: Path
    ) -> None:
        api = ApiProcess({**cluster.env, "AGENTFARM_EVENTS_KEEPALIVE_S": "0.3"}, tmp_path / "api.log")
        try:
            task_id = submit(api, "idle stream")  # no worker: nothing happens after `queued`
            redis = Redis.from_url(cluster.redis.url)

            def blocked_readers() -> int:
                # Blocked in XREAD right now (an idle pooled connection only remembers its last command).
                return sum(1 for c in redis.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", ""))

            raw: list[str] = []
            url = f"{api.url}/v1/tasks/{task_id}/events"
            async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url, headers=ACME) as response:
                async for line in response.aiter_lines():
                    raw.append(line)
                    if sum(1 for r in raw if r.startswith(": keep-alive")) >= 2:
                        break
                assert await eventually(lambda: blocked_readers() == 1, timeout_s=2)
            assert raw[:2] == ["id: 1", "event: queued"]
            assert await eventually(lambda: blocked_readers() == 0, timeout_s=5), "the reader outlived its client"
            redis.close()
        finally:
            api.stop()


class TestCrashConsistency:
    async def test_a_sigkilled_worker_leaves_a_gap_free_log_that_ends_once(
        self, stack: Any, llm_server: ScriptedLLM
    ) -> None:
        cluster, (api, _) = stack
        llm_server.default_delay_s = 1.0
        doomed = cluster.start_worker()
        task_id = submit(api, "crash consistency")
        url = f"{api.url}/v1/tasks/{task_id}/events"
        head = await read_events(url, ACME, stop_after=3)
        assert "running" in {e.type for e in head.events}
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.process.wait(timeout=10)
        cluster.start_worker()
        rest = await read_events(url, ACME, last_event_id=head.events[-1].id, timeout_s=90)
        events = head.events + rest.events
        assert_one_run_to_the_end(events)
        recovered = [e for e in events if e.type == "queued" and e.data["reason"] == "lease_lapsed"]
        assert len(recovered) == 1
        assert [e.type for e in events].count("running") >= 2


async def test_many_concurrent_streams_see_the_same_events(stack: Any, llm_server: ScriptedLLM) -> None:
    cluster, (api, other) = stack
    llm_server.default_delay_s = 0.2
    task_id = submit(api, "many readers")
    readers = [
        asyncio.ensure_future(read_events(f"{(api, other)[i % 2].url}/v1/tasks/{task_id}/events", ACME))
        for i in range(6)
    ]
    await asyncio.sleep(0.3)
    # Off the loop: starting a worker blocks for seconds, and a connection whose request this loop has not
    # yet sent would meet hypercorn's 5 s idle timeout (seen on a loaded machine).
    await asyncio.to_thread(cluster.start_worker)
    streams = await asyncio.gather(*readers)
    sequences = [[(e.id, e.type) for e in s.events] for s in streams]
    assert all(s == sequences[0] for s in sequences)
    assert_one_run_to_the_end(streams[0].events)


async def test_a_normal_shutdown_ends_open_streams_with_a_comment_not_a_cut(cluster: Cluster, tmp_path: Path) -> None:
    api = ApiProcess(cluster.env, tmp_path / "api.log")
    try:
        task_id = submit(api, "shutdown while streaming")  # no worker: the stream stays open
        reading = asyncio.ensure_future(read_events(f"{api.url}/v1/tasks/{task_id}/events", ACME, timeout_s=30))
        await asyncio.sleep(1.0)
        began = time.monotonic()
        api.process.send_signal(signal.SIGTERM)
        stream = await reading
        assert stream.ended and [e.type for e in stream.events] == ["queued"]
        assert "server shutting down: reconnect with Last-Event-ID" in stream.comments
        assert time.monotonic() - began < 5, "the stream waited for hypercorn's graceful timeout"
        assert api.process.wait(timeout=15) == 0
    finally:
        api.stop()


async def test_cli_watch_follows_the_stream_across_an_api_restart(
    cluster: Cluster, llm_server: ScriptedLLM, tmp_path: Path
) -> None:
    """`agentfarm watch` resumes with Last-Event-ID when its API goes away and comes back."""
    llm_server.default_delay_s = 1.0
    first = ApiProcess(cluster.env, tmp_path / "api-1.log")
    cluster.start_worker()
    task_id = submit(first, "watch across a restart")
    env = {**cluster.env, "AGENTFARM_URL": first.url, "AGENTFARM_API_KEY": ACME["Authorization"].split()[1]}
    out_path = tmp_path / "watch.out"
    with out_path.open("wb") as out:
        watcher = subprocess.Popen(  # noqa: ASYNC220 - a child we wait for off the loop
            [sys.executable, "-m", "service.cli", "watch", task_id], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        assert await eventually(lambda: "running" in out_path.read_text(), timeout_s=30)
        first.stop()  # the stream ends with "server shutting down"; the watcher retries
        second = ApiProcess(cluster.env, tmp_path / "api-2.log", port=first.port)
        try:
            code = await asyncio.to_thread(watcher.wait, 60)
        finally:
            second.stop()
    printed = out_path.read_text()
    assert code == 0, printed
    assert printed.strip().splitlines()[-1].startswith("100%  completed"), printed

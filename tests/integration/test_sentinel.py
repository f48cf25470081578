"""Redis behind Sentinel: the API and a worker find the master through three sentinels, and a
failover in the middle of traffic loses no accepted task and runs none twice.

The group (tests/support/sentinel.py) is a master, one replica and three sentinels on loopback.
AGENTFARM_REDIS_URL points at a closed port, so everything must come through the sentinels.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ACME, ApiProcess, WorkerProcess, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import free_port
from tests.support.sentinel import MASTER_NAME, SentinelGroup

pytestmark = pytest.mark.slow

# What a Sentinel deployment of Agent Farm must set on its Redis nodes (deploy/README.md):
# a master that has lost its replica refuses writes (NOREPLICAS) instead of accepting writes
# that the promoted replica never sees. Without it, a task accepted by the demoted master in
# the seconds before Sentinel reconfigures it is silently lost.
NODE_ARGS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10", "--repl-diskless-sync-delay", "0")
BEFORE = 6  # tasks queued before the failover


def submit(api: ApiProcess, topic: str) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/tasks/research", json={"topic": topic}, headers=ACME, timeout=10)


def topic(n: int) -> str:
    return f"sentinel-topic-{n:03d}-end"  # no topic is a substring of another


class Traffic(threading.Thread):
    """Submits tasks and reads one back, in a loop, recording every answer, until stopped."""

    def __init__(self, api: ApiProcess, known_id: str) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.known_id = known_id
        self.stopping = threading.Event()
        self.answers: list[tuple[str, int, str]] = []  # (request, status, content type)
        self.accepted: dict[str, str] = {}  # task id -> topic
        self.failures: list[str] = []

    def run(self) -> None:
        n = 100
        while not self.stopping.is_set():
            n += 1
            for name, call in (
                ("submit", lambda n=n: submit(self.api, topic(n))),
                ("get", lambda: httpx.get(f"{self.api.url}/v1/tasks/{self.known_id}", headers=ACME, timeout=10)),
                ("ready", lambda: httpx.get(f"{self.api.url}/health/ready", timeout=10)),
            ):
                try:
                    response = call()
                except httpx.HTTPError as exc:
                    self.failures.append(f"{name}: {exc!r}")
                    continue
                self.answers.append((name, response.status_code, response.headers.get("content-type", "")))
                if name == "submit" and response.status_code == 202:
                    self.accepted[response.json()["id"]] = topic(n)
            time.sleep(0.05)


def wait_final(api: ApiProcess, task_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{api.url}/v1/tasks/{task_id}", headers=ACME, timeout=10)
        assert response.status_code == 200, response.text
        task = response.json()
        if task["status"] in {"completed", "failed", "cancelled"}:
            return task
        time.sleep(0.1)
    raise AssertionError(f"{task_id} not finished after {timeout_s} s: {task}")


def test_failover_loses_no_accepted_task_and_runs_none_twice(tmp_path: Path, llm_server: ScriptedLLM) -> None:
    group = SentinelGroup(data_args=NODE_ARGS)
    api: ApiProcess | None = None
    worker: WorkerProcess | None = None
    traffic: Traffic | None = None
    try:
        group.start()
        llm_server.reset()
        env = service_env(
            f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: only the sentinels lead to Redis
            llm_server,
            AGENTFARM_REDIS_SENTINELS=group.addresses,
            AGENTFARM_REDIS_SENTINEL_MASTER=MASTER_NAME,
        )
        api = ApiProcess(env, tmp_path / "api.log")

        queued: dict[str, str] = {}
        for n in range(BEFORE):
            response = submit(api, topic(n))
            assert response.status_code == 202, response.text
            queued[response.json()["id"]] = topic(n)
        deadline = time.monotonic() + 5
        while not group.replicated():
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.02)

        traffic = Traffic(api, next(iter(queued)))
        traffic.start()
        time.sleep(0.3)
        old, new = group.failover()
        time.sleep(0.5)  # traffic against the settled new master too
        traffic.stopping.set()
        traffic.join(timeout=15)
        assert group.master_port() == new != old

        # Only now a worker: it must find every task on the new master.
        worker = WorkerProcess(env, tmp_path / "worker.log")
        worker.wait_started(group.master.url, timeout_s=30)

        accepted = {**queued, **traffic.accepted}
        for task_id, task_topic in accepted.items():
            final = wait_final(api, task_id, timeout_s=30)
            assert final["status"] == "completed", final
            assert final["attempt"] == 1, final
            calls = llm_server.received(containing=task_topic)
            assert len(calls) == final["usage"]["llm_calls"] > 0, (task_topic, len(calls), final["usage"])

        # The API never failed otherwise: 2xx, or a 503 problem while the master moved.
        assert traffic.failures == [], traffic.failures[:5]
        odd = [a for a in traffic.answers if not (200 <= a[1] < 300 or (a[1] == 503 and "problem+json" in a[2]))]
        assert odd == [], odd[:10]
        assert len(traffic.answers) > 30
        print(
            f"\nfailover {old} -> {new}: {len(queued)} tasks queued before, {len(traffic.accepted)} accepted during, "
            f"answers {sorted({(a[0], a[1]) for a in traffic.answers})}"
        )
    finally:
        if traffic is not None:
            traffic.stopping.set()
        for proc in (worker, api):
            if proc is not None:
                proc.stop()
        group.close()

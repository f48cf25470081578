"""One trace per task across processes, logs that join it, and metrics that count tasks."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ACME, SCRIPTED_MODEL, ApiProcess
from tests.deploy.test_configs import KNOWN_METRICS
from tests.support.cluster import Cluster
from tests.support.llm_server import ScriptedLLM, count_tokens
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.redis_server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as otlp:
        yield otlp


@pytest.fixture
def traced(tmp_path: Path, llm_server: ScriptedLLM, receiver: OTLPReceiver) -> Iterator[tuple[Cluster, ApiProcess]]:
    """API and worker processes exporting traces and logs to the in-process OTLP receiver."""
    llm_server.reset()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
    }
    cluster = Cluster(tmp_path, llm_server, AGENTFARM_WORKER_METRICS_PORT=str(free_port()), **otel)
    api = ApiProcess(cluster.env, tmp_path / "api.log")
    cluster.start_worker()
    yield cluster, api
    api.stop()
    cluster.close()


def tree(spans: list[ReceivedSpan]) -> list[str]:
    """The trace as indented lines: service, span name, parent before children, in start order."""
    by_parent: dict[str | None, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_ns):
        by_parent.setdefault(span.parent_span_id if span.parent_span_id in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            lines.append(f"{'  ' * depth}{span.name}  [{span.service_name}]")
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return lines


class TestOneTracePerTask:
    def test_task_is_one_trace_across_api_and_worker(
        self, traced: tuple[Cluster, ApiProcess], receiver: OTLPReceiver, llm_server: ScriptedLLM
    ) -> None:
        """A task's request, queue wait, job, crew, agent tasks and LLM calls form one trace, with token counts."""
        _, api = traced
        with httpx.Client(base_url=api.url, headers=ACME, timeout=10) as client:
            created = client.post("/v1/tasks/swot", json={"company": "Traceable Corp"}).json()
            trace_id = created["trace_id"]
            assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
            deadline = time.monotonic() + 60
            while (task := client.get(f"/v1/tasks/{created['id']}").json())["status"] != "completed":
                assert time.monotonic() < deadline, task
                time.sleep(0.1)

        def complete(spans: list[ReceivedSpan]) -> bool:
            # The job span ends last (after settling), so it may come in a later export batch than the crew's.
            names = {s.name for s in spans}
            return sum(s.name.startswith("chat ") for s in spans) == 3 and {"crew swot", "run_task swot"} <= names

        assert receiver.wait_for(lambda r: complete(r.spans(trace_id)), timeout_s=15), tree(receiver.spans(trace_id))
        spans = receiver.spans(trace_id)
        print("\n" + "\n".join(tree(spans)))
        names = {s.name: s for s in spans}
        server = names["POST /v1/tasks/swot"]
        job = names["run_task swot"]
        assert server.service_name == "agentfarm-api" and server.parent_span_id is None
        assert job.service_name == "agentfarm-worker" and job.parent_span_id == server.span_id
        assert names["queue wait"].parent_span_id == server.span_id
        assert names["crew swot"].parent_span_id == job.span_id
        agents = [s for s in spans if s.name.startswith("invoke_agent ")]
        assert {a.parent_span_id for a in agents} == {names["crew swot"].span_id}
        calls = sorted((s for s in spans if s.name == f"chat {SCRIPTED_MODEL}"), key=lambda s: s.start_ns)
        assert {c.parent_span_id for c in calls} <= {a.span_id for a in agents}
        received = llm_server.received(containing="Traceable Corp")
        assert [c.attributes["gen_ai.usage.input_tokens"] for c in calls] == [count_tokens(r.text) for r in received]
        assert all(c.attributes["gen_ai.usage.output_tokens"] > 0 for c in calls)
        assert all(c.attributes["gen_ai.request.model"] == SCRIPTED_MODEL for c in calls)
        assert any(s.attributes.get("db.system") == "redis" or "redis" in str(s.attributes) for s in spans), (
            "Redis calls made for the task are traced"
        )
        assert not any(s.name.startswith(("GET /health", "GET /metrics")) for s in receiver.spans())

    def test_logs_carry_the_trace_id(self, traced: tuple[Cluster, ApiProcess], receiver: OTLPReceiver) -> None:
        """Log lines of a task from both processes are exported with its trace id (one click from trace to logs)."""
        _, api = traced
        with httpx.Client(base_url=api.url, headers=ACME, timeout=10) as client:
            created = client.post("/v1/tasks/swot", json={"company": "Logged Corp"}).json()
            deadline = time.monotonic() + 60
            while client.get(f"/v1/tasks/{created['id']}").json()["status"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        trace_id = created["trace_id"]

        def events() -> set[tuple[str, str]]:
            return {(log.service_name, log.body) for log in receiver.logs(trace_id)}

        wanted = {("agentfarm-api", "task_submitted"), ("agentfarm-worker", "task_finished")}
        assert receiver.wait_for(lambda _: wanted <= events(), timeout_s=15), events()
        finished = next(log for log in receiver.logs(trace_id) if log.body == "task_finished")
        assert finished.attributes["task_id"] == created["id"]
        assert finished.attributes["status"] == "completed"


class TestMetrics:
    def test_metrics_count_tasks_by_kind_and_status(
        self, traced: tuple[Cluster, ApiProcess], llm_server: ScriptedLLM
    ) -> None:
        """After N tasks, /metrics counts them by kind and status, with LLM calls, queue depth and live workers."""
        cluster, api = traced
        bodies = [("swot", {"company": f"Metric Corp {i}"}) for i in range(3)]
        bodies += [("research", {"topic": f"metric topic {i}", "depth": "basic"}) for i in range(2)]
        with httpx.Client(base_url=api.url, headers=ACME, timeout=10) as client:
            ids = [client.post(f"/v1/tasks/{path}", json=body).json()["id"] for path, body in bodies]
            cancelled = client.post("/v1/tasks/swot", json={"company": "Cancelled Corp"}).json()["id"]
            client.post(f"/v1/tasks/{cancelled}/cancel")
            deadline = time.monotonic() + 60
            while any(client.get(f"/v1/tasks/{i}").json()["status"] != "completed" for i in ids):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            api_metrics = httpx.get(f"{api.url}/metrics").text
        worker_metrics = httpx.get(f"http://127.0.0.1:{cluster.env['AGENTFARM_WORKER_METRICS_PORT']}/metrics").text

        def value(text: str, name: str, **labels: str) -> float:
            for line in text.splitlines():
                if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
            raise AssertionError(f"{name}{labels} not exposed")

        assert value(api_metrics, "agentfarm_tasks_submitted_total", kind="swot") == 4
        assert value(api_metrics, "agentfarm_tasks_submitted_total", kind="research") == 2
        assert value(api_metrics, "agentfarm_tasks_finished_total", kind="swot", status="cancelled") == 1
        assert value(worker_metrics, "agentfarm_tasks_finished_total", kind="swot", status="completed") == 3
        assert value(worker_metrics, "agentfarm_tasks_finished_total", kind="research", status="completed") == 2
        assert value(worker_metrics, "agentfarm_llm_calls_total", model=SCRIPTED_MODEL, kind="swot") == 9
        assert value(worker_metrics, "agentfarm_task_duration_seconds_count", kind="swot", status="completed") == 3
        assert value(worker_metrics, "agentfarm_dispatch_latency_seconds_count", kind="research") == 2
        prompt = sum(count_tokens(r.text) for r in llm_server.received())
        prompt_by_label = sum(
            float(line.rsplit(" ", 1)[1])
            for line in worker_metrics.splitlines()
            if line.startswith("agentfarm_llm_tokens_total{") and 'type="prompt"' in line and 'tenant="acme"' in line
        )
        assert prompt_by_label == prompt
        assert value(api_metrics, "agentfarm_workers_live", queue="specialized") == 1
        assert value(api_metrics, "agentfarm_queue_depth", queue="research") == 0
        assert value(api_metrics, "agentfarm_http_requests_total", path="/v1/tasks/swot", method="POST") == 4
        assert value(api_metrics, "agentfarm_http_requests_total", path="/v1/tasks/{task_id}", method="GET") > 0, (
            "request paths are grouped by route, not one series per task"
        )
        assert "/health/" not in api_metrics
        # Every series the dashboards and alerts use (tests/deploy) is exposed by a process.
        # The HTTP error counter appears with the first failing request, which this test does not make.
        exposed = set(re.findall(r"agentfarm_[a-z_]+", api_metrics + worker_metrics))
        expected = KNOWN_METRICS - {"agentfarm_http_requests_error_total"}
        assert all(name in exposed or f"{name}_bucket" in exposed for name in expected), expected - exposed


class TestCollectorDown:
    def test_service_works_when_the_collector_is_down(self, tmp_path: Path, llm_server: ScriptedLLM) -> None:
        """With the OTLP endpoint unreachable, tasks are accepted and completed as usual."""
        llm_server.reset()
        dead = f"http://127.0.0.1:{free_port()}"
        # A 1 s export timeout (the SDK's default is 10 s) so the processes' final flushes give up quickly.
        cluster = Cluster(
            tmp_path,
            llm_server,
            OTEL_EXPORTER_OTLP_ENDPOINT=dead,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
        )
        api = ApiProcess(cluster.env, tmp_path / "api.log")
        try:
            cluster.start_worker()
            with httpx.Client(base_url=api.url, headers=ACME, timeout=10) as client:
                started = time.monotonic()
                created = client.post("/v1/tasks/swot", json={"company": "Offline Collector Corp"})
                assert created.status_code == 202 and time.monotonic() - started < 2
                deadline = time.monotonic() + 60
                while (task := client.get(f"/v1/tasks/{created.json()['id']}").json())["status"] != "completed":
                    assert time.monotonic() < deadline, task
                    time.sleep(0.1)
        finally:
            api.stop()
            cluster.close()
        assert os.path.exists(tmp_path / "api.log")

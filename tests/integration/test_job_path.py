"""A task's whole path: HTTP submit -> Redis -> arq worker process -> crew -> scripted LLM over HTTP -> result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import ACME, SCRIPTED_MODEL, WorkerProcess
from tests.support.llm_server import Reply, ScriptedLLM, count_tokens
from tests.support.polling import wait_finished

pytestmark = pytest.mark.usefixtures("worker")

Client = AsyncTestClient  # type: ignore[type-arg]

KIND_BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("research", "research", {"topic": "solid-state batteries for cars"}),
    ("swot", "swot", {"company": "Acme Robotics"}),
    ("investment", "investment", {"company": "Acme Robotics", "horizon": "long"}),
    ("technical_review", "technical-review", {"subject": "the payment service", "context": "def pay(): ..."}),
]


async def submit(api: Client, path: str, body: dict[str, Any], headers: dict[str, str] = ACME) -> dict[str, Any]:
    response = await api.post(f"/v1/tasks/{path}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    return task


class TestEveryKindCompletes:
    @pytest.mark.parametrize(("kind", "path", "body"), KIND_BODIES, ids=[k for k, _, _ in KIND_BODIES])
    async def test_kind_completes_with_structured_result_and_usage(
        self, api: Client, llm_server: ScriptedLLM, kind: str, path: str, body: dict[str, Any]
    ) -> None:
        """Each job kind, submitted over HTTP, ends completed with a structured report and its LLM usage."""
        task = await submit(api, path, body)
        assert task["status"] == "queued" and task["kind"] == kind

        final, _ = await wait_finished(api, task["id"], ACME)

        assert final["status"] == "completed", final["error"]
        assert final["progress"] == 100
        assert final["attempt"] == 1
        result = final["result"]
        assert result["title"] and result["summary"] and result["sections"]
        assert result["markdown"].startswith(f"# {result['title']}")
        for section in result["sections"]:
            assert f"## {section['heading']}" in result["markdown"]
        calls = llm_server.received()
        assert final["usage"] == {
            "llm_calls": len(calls),
            "prompt_tokens": sum(count_tokens(c.text) for c in calls),
            "completion_tokens": final["usage"]["completion_tokens"],
            "model": SCRIPTED_MODEL,
            "cost_usd": None,
            "searches": 0,
            "pages_read": 0,
        }
        assert final["usage"]["completion_tokens"] > 0
        # The last task asks for the report as a JSON schema: crewai's structured-output path ran.
        assert calls[-1].body["response_format"]["type"] == "json_schema"
        assert all(c.headers["authorization"] == "Bearer scripted-key" for c in calls)

    async def test_progress_never_goes_down(self, api: Client, llm_server: ScriptedLLM) -> None:
        """A client polling a running task sees progress rise step by step and never fall."""
        llm_server.default_delay_s = 0.3
        task = await submit(api, "research", {"topic": "tidal energy in Norway", "depth": "comprehensive"})

        final, seen = await wait_finished(api, task["id"], ACME, interval_s=0.02)

        progress = [s["progress"] for s in seen]
        assert progress == sorted(progress), progress
        assert final["status"] == "completed"
        running = [s for s in seen if s["status"] == "running"]
        assert len({s["progress"] for s in running}) >= 3, "progress should move while the crew works"
        assert any("Critical Reviewer" in s["stage"] for s in running), {s["stage"] for s in running}

    async def test_concurrent_crews_report_their_own_usage(self, api: Client, llm_server: ScriptedLLM) -> None:
        """Two crews running at once in one worker each report only the LLM usage of their own calls."""
        llm_server.default_delay_s = 0.25
        topics = ["coral reef restoration", "quantum error correction in superconducting qubits"]
        tasks = [
            await submit(api, "research", {"topic": t, "depth": d})
            for t, d in zip(topics, ["basic", "comprehensive"], strict=True)
        ]

        finals = await asyncio.gather(*(wait_finished(api, t["id"], ACME) for t in tasks))

        windows = []
        for topic, (final, _) in zip(topics, finals, strict=True):
            assert final["status"] == "completed"
            own = llm_server.received(containing=topic)
            assert final["usage"]["llm_calls"] == len(own)
            assert final["usage"]["prompt_tokens"] == sum(count_tokens(c.text) for c in own)
            windows.append((min(c.at for c in own), max(c.at for c in own)))
        # The two crews really overlapped in time (otherwise this test would prove nothing).
        assert windows[0][0] < windows[1][1] and windows[1][0] < windows[0][1]
        assert len(llm_server.received()) == sum(f["usage"]["llm_calls"] for f, _ in finals)


class TestCrewShape:
    async def test_depth_changes_the_crew(self, api: Client, llm_server: ScriptedLLM) -> None:
        """A comprehensive research crew runs more agents and steps than a basic one."""
        basic = await submit(api, "research", {"topic": "heat pumps in old houses", "depth": "basic"})
        basic_final, _ = await wait_finished(api, basic["id"], ACME)
        basic_calls = llm_server.received(containing="heat pumps in old houses")
        deep = await submit(api, "research", {"topic": "district heating networks", "depth": "comprehensive"})
        deep_final, _ = await wait_finished(api, deep["id"], ACME)
        deep_calls = llm_server.received(containing="district heating networks")

        assert basic_final["usage"]["llm_calls"] == 2
        assert deep_final["usage"]["llm_calls"] == 4
        assert not any("Critical Reviewer" in c.text for c in basic_calls)
        assert any("Critical Reviewer" in c.text for c in deep_calls)

    async def test_language_selects_report_language(self, api: Client, llm_server: ScriptedLLM) -> None:
        """A task in `ru` asks every agent to write in Russian."""
        task = await submit(api, "swot", {"company": "Yandex", "language": "ru"})
        final, _ = await wait_finished(api, task["id"], ACME)

        assert final["status"] == "completed"
        calls = llm_server.received(containing="Yandex")
        assert calls and all("Russian" in c.text and "English" not in c.text for c in calls)

    async def test_crew_type_changes_the_researcher(self, api: Client, llm_server: ScriptedLLM) -> None:
        """The `market` research crew is led by a market researcher, not the general one."""
        task = await submit(api, "research", {"topic": "electric cargo bikes", "crew_type": "market"})
        await wait_finished(api, task["id"], ACME)

        first = llm_server.received(containing="electric cargo bikes")[0]
        assert "Market Research Analyst" in first.text
        assert "Senior Research Analyst" not in first.text


class TestFailures:
    async def test_llm_auth_error_fails_the_task_with_a_clear_error(self, api: Client, llm_server: ScriptedLLM) -> None:
        """When the LLM rejects the key, the task fails with an error naming the cause, not a hang."""
        llm_server.script(*[Reply(status=401, content="Incorrect API key provided")] * 10)
        task = await submit(api, "swot", {"company": "Initech"})

        final, _ = await wait_finished(api, task["id"], ACME)

        assert final["status"] == "failed"
        assert final["error"]["type"]
        assert "API key" in final["error"]["message"] or "401" in final["error"]["message"]
        assert final["finished_at"] is not None


class TestReport:
    async def test_report_as_markdown_and_json(self, api: Client) -> None:
        """A completed task's report is readable as markdown, and as the structured JSON on request."""
        task = await submit(api, "research", {"topic": "urban beekeeping", "depth": "basic"})
        final, _ = await wait_finished(api, task["id"], ACME)

        markdown = await api.get(f"/v1/tasks/{task['id']}/report", headers=ACME)
        assert markdown.status_code == 200
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert markdown.text == final["result"]["markdown"]

        as_json = await api.get(f"/v1/tasks/{task['id']}/report", headers={**ACME, "Accept": "application/json"})
        assert as_json.status_code == 200
        assert as_json.json() == final["result"]


class TestWorkerHealth:
    async def test_readiness_counts_live_workers(self, api: Client, worker: WorkerProcess) -> None:
        """Readiness reports Redis reachable and a live worker on each queue."""
        response = await api.get("/health/ready")

        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready" and body["redis"] == "ok"
        assert body["queues"]["research"]["live_workers"] == 1
        assert body["queues"]["specialized"]["live_workers"] == 1

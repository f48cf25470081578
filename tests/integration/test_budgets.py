"""What a task spends: exact usage per task and per attempt, token budgets, and cost at configured prices."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from jobs.settings import load_settings
from service.app import create_app
from tests.conftest import ACME, SCRIPTED_MODEL, service_env
from tests.support.cluster import Cluster
from tests.support.llm_server import Reply, ScriptedLLM
from tests.support.polling import eventually, wait_finished
from tests.support.redis_server import RedisServer, free_port

Client = AsyncTestClient  # type: ignore[type-arg]

# USD per million tokens: prices whose products are exact in binary floating point are not needed,
# costs are compared to 9 decimals (what the service rounds to).
PRICE_IN, PRICE_OUT = 2.5, 10.0


def billed(llm_server: ScriptedLLM, marker: str) -> tuple[int, int, int]:
    """(calls, prompt tokens, completion tokens) the scripted server billed for prompts containing ``marker``."""
    own = llm_server.completed(containing=marker)
    return len(own), sum(b.prompt_tokens for b in own), sum(b.completion_tokens for b in own)


async def submit(api: Client, path: str, body: dict[str, Any]) -> str:
    response = await api.post(f"/v1/tasks/{path}", json=body, headers=ACME)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


@pytest.mark.usefixtures("worker")
class TestExactUsage:
    async def test_four_crews_at_once_each_report_what_the_server_billed_for_them(
        self, api: Client, llm_server: ScriptedLLM
    ) -> None:
        """Four tasks in one worker at once: each task's usage is the sum of the server's usage of its own calls."""
        llm_server.default_delay_s = 0.2
        markers = ["Marker Alpha Ltd", "Marker Bravo Ltd", "Marker Charlie Ltd", "Marker Delta Ltd"]
        bodies = [
            ("research", {"topic": f"supply chains of {markers[0]}", "depth": "standard"}),
            ("swot", {"company": markers[1]}),
            ("investment", {"company": markers[2], "horizon": "short"}),
            ("technical-review", {"subject": f"the billing code of {markers[3]}"}),
        ]
        ids = [await submit(api, path, body) for path, body in bodies]

        finals = await asyncio.gather(*(wait_finished(api, i, ACME) for i in ids))

        windows = []
        for marker, (final, _) in zip(markers, finals, strict=True):
            assert final["status"] == "completed", final["error"]
            calls, prompt, completion = billed(llm_server, marker)
            usage = final["usage"]
            assert (usage["llm_calls"], usage["prompt_tokens"], usage["completion_tokens"]) == (
                calls,
                prompt,
                completion,
            )
            assert final["usage_total"] == usage, "one attempt: its usage is the whole bill"
            assert usage["cost_usd"] is None, "no prices configured: no cost claimed"
            own = llm_server.received(containing=marker)
            windows.append((min(c.at for c in own), max(c.at for c in own)))
        assert sum(f["usage"]["llm_calls"] for f, _ in finals) == len(llm_server.completed())
        overlapping = sum(1 for a in windows for b in windows if a is not b and a[0] < b[1] and b[0] < a[1])
        assert overlapping >= 6, "at least three of the crews ran at the same time"

    async def test_a_retried_task_reports_each_attempt_and_the_total(
        self, api: Client, llm_server: ScriptedLLM
    ) -> None:
        """Tokens of a failed attempt stay on the bill: usage is the last attempt's, usage_total every attempt's."""
        marker = "Retry Billing GmbH"
        # The first attempt: one good call, then the provider keeps failing (transient): retried.
        llm_server.script(Reply(), *[Reply(status=503)] * 3)  # more than one attempt absorbs
        task_id = await submit(api, "swot", {"company": marker})

        final, _ = await wait_finished(api, task_id, ACME)

        assert final["status"] == "completed" and final["attempt"] == 2
        calls, prompt, completion = billed(llm_server, marker)
        total = final["usage_total"]
        assert (total["llm_calls"], total["prompt_tokens"], total["completion_tokens"]) == (calls, prompt, completion)
        assert final["usage"]["llm_calls"] == calls - 1, "the last attempt's own calls (the first made one)"
        assert final["usage"]["prompt_tokens"] < total["prompt_tokens"]


@pytest.mark.usefixtures("worker")
class TestBudget:
    async def test_a_budget_for_one_call_stops_before_the_second(self, api: Client, llm_server: ScriptedLLM) -> None:
        """Past its budget a task makes no further call: budget_exceeded, with what it spent."""
        marker = "Budget Probe Industries"
        probe = await submit(api, "swot", {"company": "Budget Sizing Industries"})
        sized, _ = await wait_finished(api, probe, ACME)
        first_call = llm_server.completed(containing="Budget Sizing Industries")[0]
        one_call = first_call.prompt_tokens + first_call.completion_tokens
        budget = one_call + one_call // 2  # room for the first call, not for a second of its size

        task_id = await submit(api, "swot", {"company": marker, "max_tokens": budget})
        final, _ = await wait_finished(api, task_id, ACME)

        assert sized["status"] == "completed" and sized["usage"]["llm_calls"] >= 3
        assert final["status"] == "failed", final
        assert final["reason"] == "budget_exceeded"
        assert final["error"]["type"] == "budget_exceeded"
        assert f"{budget:,}" in final["error"]["message"]
        assert final["max_tokens"] == budget
        assert len(llm_server.received(containing=marker)) == 1, "no call was made past the budget"
        calls, prompt, completion = billed(llm_server, marker)
        assert final["usage"]["llm_calls"] == calls == 1
        assert final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"] == prompt + completion > 0

    async def test_asking_for_more_than_the_kind_allows_is_refused(self, redis_server: RedisServer) -> None:
        """max_tokens above the kind's limit (AGENTFARM_<KIND>_MAX_TOKENS_LIMIT) is a 422 naming the field."""
        env = service_env(redis_server.url, None, AGENTFARM_SWOT_MAX_TOKENS_LIMIT="50000")
        async with AsyncTestClient(create_app(load_settings(env, env_file=None))) as api:
            refused = await api.post("/v1/tasks/swot", json={"company": "Acme", "max_tokens": 50_001}, headers=ACME)
            beyond_the_api = await api.post(
                "/v1/tasks/investment", json={"company": "Acme", "horizon": "long", "max_tokens": 10**8}, headers=ACME
            )

        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert [e["field"] for e in problem["errors"]] == ["max_tokens"]
        assert "50000" in problem["errors"][0]["message"]
        assert "AGENTFARM_SWOT_MAX_TOKENS_LIMIT" in problem["errors"][0]["message"]
        assert beyond_the_api.status_code == 400, "past the API's own bound: the schema says so"
        assert [e["field"] for e in beyond_the_api.json()["errors"]] == ["max_tokens"]

    async def test_without_max_tokens_the_kind_default_applies(self, api: Client) -> None:
        """A task that sets no budget gets its kind's (AGENTFARM_<KIND>_TOKEN_BUDGET)."""
        response = await api.post("/v1/tasks/research", json={"topic": "default budgets"}, headers=ACME)
        await api.post(f"/v1/tasks/{response.json()['id']}/cancel", headers=ACME)

        assert response.status_code == 202
        assert response.json()["max_tokens"] == 600_000


def _metric(page: str, name: str, **labels: str) -> float:
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not exposed")


class TestCost:
    async def test_cost_follows_the_configured_prices_and_the_metrics_carry_the_same_totals(
        self, make_cluster: Callable[..., Cluster], llm_server: ScriptedLLM
    ) -> None:
        """usage.cost_usd = prompt x input price + completion x output price; the counters add up to the same."""
        cluster = make_cluster(
            AGENTFARM_LLM_PRICE_INPUT_PER_MTOK=str(PRICE_IN), AGENTFARM_LLM_PRICE_OUTPUT_PER_MTOK=str(PRICE_OUT)
        )
        metrics_port = free_port()
        cluster.start_worker(AGENTFARM_WORKER_METRICS_PORT=str(metrics_port))
        async with cluster.api() as api:
            ids = [await submit(api, "swot", {"company": f"Priced Co {n}"}) for n in range(2)]
            finals = [(await wait_finished(api, task_id, ACME))[0] for task_id in ids]

        total_cost = 0.0
        for n, final in enumerate(finals):
            assert final["status"] == "completed", final["error"]
            _, prompt, completion = billed(llm_server, f"Priced Co {n}")
            expected = round((prompt * PRICE_IN + completion * PRICE_OUT) / 1_000_000, 9)
            assert final["usage"]["cost_usd"] == pytest.approx(expected, abs=1e-9)
            assert final["usage_total"]["cost_usd"] == final["usage"]["cost_usd"]
            total_cost += expected
        assert total_cost > 0

        labels = {"model": SCRIPTED_MODEL, "tenant": "acme", "kind": "swot"}
        prompt_total = sum(b.prompt_tokens for b in llm_server.completed(containing="Priced Co"))

        def counters_add_up() -> bool:
            page = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            cost = _metric(page, "agentfarm_llm_cost_usd_total", **labels)
            prompt = _metric(page, "agentfarm_llm_tokens_total", **labels, type="prompt")
            return bool(cost == pytest.approx(total_cost, abs=1e-8)) and prompt == prompt_total

        assert await eventually(counters_add_up, timeout_s=10), "the worker's counters match the tasks' usage"

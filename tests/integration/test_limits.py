"""Submission rate limits (shared by API processes) and idempotent submission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from jobs.settings import load_settings
from service.app import create_app
from tests.conftest import ACME, ACME_KEY, BETA, BETA_KEY, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import RedisServer

Client = AsyncTestClient  # type: ignore[type-arg]


@asynccontextmanager
async def api_process(redis: RedisServer, **env: str) -> AsyncIterator[Client]:
    """One API 'process': its own app and Redis connections, sharing only Redis."""
    settings = load_settings(service_env(redis.url, None, **env), env_file=None)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def fresh_redis(llm_server: ScriptedLLM) -> Any:
    redis = RedisServer()
    redis.start()
    yield redis
    redis.close()


class TestRateLimits:
    async def test_limit_holds_across_api_processes(self, fresh_redis: RedisServer) -> None:
        """Three research tasks a minute means three in total, whichever API replica takes them; then 429."""
        async with (
            api_process(fresh_redis, AGENTFARM_RESEARCH_RATE_LIMIT="3/minute") as one,
            api_process(fresh_redis, AGENTFARM_RESEARCH_RATE_LIMIT="3/minute") as two,
        ):
            statuses = [
                (await api.post("/v1/tasks/research", json={"topic": f"topic {i}"}, headers=ACME)).status_code
                for i, api in enumerate([one, two, one, two])
            ]
            limited = await two.post("/v1/tasks/research", json={"topic": "one more"}, headers=ACME)
            other_kind = await one.post("/v1/tasks/swot", json={"company": "Acme"}, headers=ACME)
            other_tenant = await one.post("/v1/tasks/research", json={"topic": "their topic"}, headers=BETA)

        assert statuses == [202, 202, 202, 429]
        assert limited.status_code == 429
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(limited.headers["retry-after"]) <= 20
        assert "3/minute" in limited.json()["detail"]
        assert other_kind.status_code == 202, "limits are per kind"
        assert other_tenant.status_code == 202, "limits are per API key"

    async def test_a_key_can_carry_its_own_limit(self, fresh_redis: RedisServer) -> None:
        """A key configured as tenant:key:N/period gets its own limit instead of the kind's."""
        keys = f"acme:{ACME_KEY}:1/minute,beta:{BETA_KEY}"
        async with api_process(fresh_redis, AGENTFARM_API_KEYS=keys, AGENTFARM_SWOT_RATE_LIMIT="100/minute") as api:
            first = await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers=ACME)
            second = await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers=ACME)
            beta = [
                (await api.post("/v1/tasks/swot", json={"company": "Beta"}, headers=BETA)).status_code for _ in "xyz"
            ]
        assert (first.status_code, second.status_code) == (202, 429)
        assert beta == [202, 202, 202]

    async def test_rate_limited_request_changes_nothing(self, fresh_redis: RedisServer) -> None:
        """A 429 creates no task."""
        async with api_process(fresh_redis, AGENTFARM_SWOT_RATE_LIMIT="1/hour") as api:
            await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers=ACME)
            await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers=ACME)
            listed = (await api.get("/v1/tasks", headers=ACME)).json()["items"]
        assert len(listed) == 1


class TestIdempotency:
    async def test_same_key_and_body_returns_the_same_task(self, fresh_redis: RedisServer) -> None:
        """Retrying a submission with the same Idempotency-Key gives back the first task, not a new one."""
        headers = {**ACME, "Idempotency-Key": "order-42"}
        async with api_process(fresh_redis) as one, api_process(fresh_redis) as two:
            first = await one.post("/v1/tasks/swot", json={"company": "Acme"}, headers=headers)
            again = await two.post("/v1/tasks/swot", json={"company": "Acme", "language": "en"}, headers=headers)
            listed = (await one.get("/v1/tasks", headers=ACME)).json()["items"]
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert len(listed) == 1

    async def test_same_key_with_different_body_is_422(self, fresh_redis: RedisServer) -> None:
        """Reusing an Idempotency-Key for a different request is refused with 422, creating nothing."""
        headers = {**ACME, "Idempotency-Key": "order-43"}
        async with api_process(fresh_redis) as api:
            await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers=headers)
            other_body = await api.post("/v1/tasks/swot", json={"company": "Globex"}, headers=headers)
            other_kind = await api.post("/v1/tasks/investment", json={"company": "Acme"}, headers=headers)
            listed = (await api.get("/v1/tasks", headers=ACME)).json()["items"]
        assert other_body.status_code == other_kind.status_code == 422
        assert "Idempotency-Key" in other_body.json()["detail"]
        assert len(listed) == 1

    async def test_keys_are_per_tenant(self, fresh_redis: RedisServer) -> None:
        """Two tenants using the same Idempotency-Key get their own tasks."""
        async with api_process(fresh_redis) as api:
            mine = await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers={**ACME, "Idempotency-Key": "k"})
            theirs = await api.post(
                "/v1/tasks/swot", json={"company": "Acme"}, headers={**BETA, "Idempotency-Key": "k"}
            )
        assert mine.json()["id"] != theirs.json()["id"]

    async def test_rate_limited_submission_can_be_retried_with_its_key(self, fresh_redis: RedisServer) -> None:
        """A 429 does not burn the Idempotency-Key: the same request succeeds later."""
        async with api_process(fresh_redis, AGENTFARM_SWOT_RATE_LIMIT="1/second") as api:
            await api.post("/v1/tasks/swot", json={"company": "First"}, headers=ACME)
            headers = {**ACME, "Idempotency-Key": "after-429"}
            limited = await api.post("/v1/tasks/swot", json={"company": "Second"}, headers=headers)
            await asyncio.sleep(1.1)
            accepted = await api.post("/v1/tasks/swot", json={"company": "Second"}, headers=headers)
        assert limited.status_code == 429
        assert accepted.status_code == 202 and "idempotent-replayed" not in accepted.headers

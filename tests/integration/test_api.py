"""The HTTP contract: validation, auth, tenancy, listing, errors and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from redis import Redis

from jobs.settings import load_settings
from service.app import create_app
from tests.conftest import ACME, BETA, service_env
from tests.support.redis_server import RedisServer

Client = AsyncTestClient  # type: ignore[type-arg]

# (path, body, field the error must name)
INVALID_BODIES: list[tuple[str, Any, str]] = [
    ("research", {}, "topic"),
    ("research", {"topic": "abc"}, "topic"),
    ("research", {"topic": "x" * 501}, "topic"),
    ("research", {"topic": "     "}, "topic"),
    ("research", {"topic": 42}, "topic"),
    ("research", {"topic": "valid topic", "depth": "deep"}, "depth"),
    ("research", {"topic": "valid topic", "language": "de"}, "language"),
    ("research", {"topic": "valid topic", "crew_type": "nonexistent"}, "crew_type"),
    ("research", {"topic": "valid topic", "priority": 1}, "priority"),
    ("swot", {"company": "A"}, "company"),
    ("swot", {"company": "Acme", "horizon": "long"}, "horizon"),
    ("investment", {"company": "Acme", "horizon": "forever"}, "horizon"),
    ("technical-review", {"subject": "the code", "context": "x" * 20_001}, "context"),
    ("technical-review", {"context": "only context"}, "subject"),
]


async def submit(
    api: Client, path: str = "research", body: dict[str, Any] | None = None, headers: dict[str, str] = ACME
) -> dict[str, Any]:
    response = await api.post(f"/v1/tasks/{path}", json=body or {"topic": "wind farms at sea"}, headers=headers)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


class TestValidation:
    @pytest.mark.parametrize(("path", "body", "field"), INVALID_BODIES)
    async def test_invalid_body_is_rejected_naming_the_field(
        self, api: Client, redis_server: RedisServer, path: str, body: Any, field: str
    ) -> None:
        """An invalid body gets a 400 problem+json that names the field and stores nothing."""
        response = await api.post(f"/v1/tasks/{path}", json=body, headers=ACME)

        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == 400
        assert field in problem["detail"]
        assert [e["field"] for e in problem["errors"]] == [field]
        assert Redis.from_url(redis_server.url).keys("agentfarm:task:*") == []

    @pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'"topic"'])
    async def test_malformed_json_is_a_client_error(self, api: Client, raw: bytes) -> None:
        """A body that is not a JSON object gets a 4xx problem, never a 5xx."""
        response = await api.post(
            "/v1/tasks/research", content=raw, headers={**ACME, "Content-Type": "application/json"}
        )

        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_oversized_body_gets_413(self, api: Client) -> None:
        """A body over AGENTFARM_MAX_BODY_BYTES is refused with 413 before it is parsed."""
        response = await api.post(
            "/v1/tasks/technical-review",
            content=b'{"subject": "big", "context": "' + b"x" * 2_000_000 + b'"}',
            headers={**ACME, "Content-Type": "application/json"},
        )

        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_defaults_are_filled_in(self, api: Client) -> None:
        """Optional fields take their documented defaults in the stored params."""
        task = await submit(api, body={"topic": "wind farms at sea"})

        assert task["params"] == {
            "topic": "wind farms at sea",
            "crew_type": "general",
            "language": "en",
            "depth": "standard",
        }
        assert task["max_attempts"] == 4 and task["attempt"] == 0 and task["progress"] == 0


class TestAuth:
    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
    )
    async def test_missing_or_bad_key_gets_401(self, api: Client, headers: dict[str, str]) -> None:
        """Without a valid bearer key every task endpoint answers 401 with a Bearer challenge."""
        for method, url in [("GET", "/v1/tasks"), ("POST", "/v1/tasks/research"), ("GET", "/v1/tasks/x/report")]:
            response = await api.request(method, url, headers=headers, json={"topic": "valid topic"})
            assert response.status_code == 401, (method, url, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"].startswith("application/problem+json")

    async def test_probes_and_schema_need_no_key(self, api: Client) -> None:
        """Liveness, readiness and the OpenAPI document are open to probes and tooling."""
        for url in ["/health/live", "/health/ready", "/schema/openapi.json"]:
            assert (await api.get(url)).status_code == 200, url


class TestTenancy:
    async def test_other_tenants_task_is_not_found(self, api: Client) -> None:
        """Tenant B gets 404 on tenant A's task, exactly as for a task that does not exist."""
        task = await submit(api, headers=ACME)

        for url in [f"/v1/tasks/{task['id']}", f"/v1/tasks/{task['id']}/report"]:
            theirs = await api.get(url, headers=BETA)
            assert theirs.status_code == 404
        missing = await api.get("/v1/tasks/00000000-0000-4000-8000-000000000000", headers=BETA)
        assert missing.status_code == 404
        assert (await api.get(f"/v1/tasks/{task['id']}", headers=ACME)).status_code == 200

    async def test_other_tenants_task_is_not_listed(self, api: Client) -> None:
        """A tenant's list holds only its own tasks."""
        mine = await submit(api, headers=ACME)
        theirs = await submit(api, headers=BETA)

        acme_ids = [t["id"] for t in (await api.get("/v1/tasks", headers=ACME)).json()["items"]]
        beta_ids = [t["id"] for t in (await api.get("/v1/tasks", headers=BETA)).json()["items"]]
        assert acme_ids == [mine["id"]]
        assert beta_ids == [theirs["id"]]


class TestListing:
    async def test_pages_newest_first_without_gaps_or_repeats(self, api: Client) -> None:
        """Following next_cursor walks all tasks, newest first, each exactly once."""
        created = [await submit(api, body={"topic": f"topic number {i}"}) for i in range(7)]

        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/v1/tasks", params=params, headers=ACME)).json()
            seen += [t["id"] for t in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [t["id"] for t in reversed(created)]
        assert pages == 3

    async def test_filters_by_kind_and_status(self, api: Client) -> None:
        """`kind` and `status` narrow the list."""
        research = await submit(api)
        swot = await submit(api, "swot", {"company": "Globex"})

        by_kind = (await api.get("/v1/tasks", params={"kind": "swot"}, headers=ACME)).json()["items"]
        assert [t["id"] for t in by_kind] == [swot["id"]]
        queued = (await api.get("/v1/tasks", params={"status": "queued"}, headers=ACME)).json()["items"]
        assert {t["id"] for t in queued} == {research["id"], swot["id"]}
        none = (await api.get("/v1/tasks", params={"status": "completed"}, headers=ACME)).json()["items"]
        assert none == []

    @pytest.mark.parametrize(
        "params", [{"cursor": "garbage!"}, {"limit": 0}, {"limit": 101}, {"status": "done"}, {"kind": "poem"}]
    )
    async def test_bad_list_parameters_are_400(self, api: Client, params: dict[str, Any]) -> None:
        """Bad list parameters get a 400 problem naming the parameter."""
        response = await api.get("/v1/tasks", params=params, headers=ACME)

        assert response.status_code == 400, response.text
        assert next(iter(params)) in response.text

    async def test_report_of_unfinished_task_is_409(self, api: Client) -> None:
        """Asking for the report of a task that has not completed says so with 409."""
        task = await submit(api)

        response = await api.get(f"/v1/tasks/{task['id']}/report", headers=ACME)

        assert response.status_code == 409
        assert "queued" in response.json()["detail"]


class TestRedisDown:
    async def test_redis_outage_gives_503_not_500(self, llm_server: Any) -> None:
        """With Redis unreachable the API answers 503 (readiness too) and recovers when it is back."""
        redis = RedisServer()
        redis.start()
        try:
            settings = load_settings(service_env(redis.url, None), env_file=None)
            async with AsyncTestClient(create_app(settings)) as api:
                redis.stop()
                ready = await api.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["redis"] == "unreachable"
                submitted = await api.post("/v1/tasks/research", json={"topic": "valid topic"}, headers=ACME)
                assert submitted.status_code == 503, submitted.text
                assert submitted.headers["content-type"].startswith("application/problem+json")
                listed = await api.get("/v1/tasks", headers=ACME)
                assert listed.status_code == 503

                redis.start()
                assert (await api.get("/health/ready")).json()["redis"] == "ok"
                assert (
                    await api.post("/v1/tasks/research", json={"topic": "valid topic"}, headers=ACME)
                ).status_code == 202
        finally:
            redis.close()


class TestOpenAPI:
    async def test_document_describes_every_endpoint_for_generated_clients(self, api: Client) -> None:
        """The OpenAPI 3.1 document types every body and response, documents errors and declares bearer auth."""
        doc = (await api.get("/schema/openapi.json")).json()

        assert doc["openapi"].startswith("3.1")
        assert doc["components"]["securitySchemes"]["BearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key.",
        }
        assert doc["security"] == [{"BearerAuth": []}]
        paths = doc["paths"]
        for kind in ["research", "swot", "investment", "technical-review"]:
            op = paths[f"/v1/tasks/{kind}"]["post"]
            assert "$ref" in op["requestBody"]["content"]["application/json"]["schema"]
            assert "$ref" in op["responses"]["202"]["content"]["application/json"]["schema"]
            assert op["responses"]["400"]["content"]["application/problem+json"]["schema"]["$ref"].endswith("Problem")
            assert "401" in op["responses"]
        assert set(paths) >= {
            "/v1/tasks",
            "/v1/tasks/{task_id}",
            "/v1/tasks/{task_id}/report",
            "/health/live",
            "/health/ready",
        }
        assert paths["/health/live"]["get"]["security"] == [{}]
        research = doc["components"]["schemas"]["ResearchParams"]
        assert research["additionalProperties"] is False
        assert research["properties"]["depth"]["enum"] == ["basic", "standard", "comprehensive"]
        assert research["properties"]["topic"]["minLength"] == 5

"""What the README promises about the HTTP API: no 500 for client input, complete problems, the public
task view, a valid OpenAPI document, offline docs, and one log line and metric per request."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import msgspec
import pytest
import structlog
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate
from redis.asyncio import Redis as AsyncRedis
from structlog.testing import capture_logs

from crews.results import Report, Section
from jobs.models import Task
from jobs.settings import Settings, load_settings
from jobs.store import TaskStore
from service.app import create_app
from service.logs import configure_logging
from service.schemas import TaskSummary, TaskView
from tests.conftest import ACME, ROOT, service_env
from tests.support.redis_server import RedisServer, free_port

Client = AsyncTestClient  # type: ignore[type-arg]
JSON = {**ACME, "Content-Type": "application/json"}
INTERNAL = {"run_token", "job_id", "traceparent", "tenant", "worker_id"}


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


async def completed_task(api: Client, settings: Settings) -> dict[str, Any]:
    """A task of ACME's, completed with a report (as a worker would leave it)."""
    task = (await api.post("/v1/tasks/research", json={"topic": "wind farms at sea"}, headers=ACME)).json()
    report = Report.build(title="Wind at sea", summary="It blows.", sections=[Section(heading="Why", body="Air.")])

    def finish(t: Task) -> Task:
        return t.started(run_token=1, worker_id="w-1", job_id=t.id).to("completed", "completed", result=report)

    redis = AsyncRedis.from_url(settings.redis.url)  # the app's client lives on the test client's own loop
    try:
        await TaskStore(redis, settings.task_ttl_s).update(task["id"], finish)
    finally:
        await redis.aclose()
    return task


class TestClientInputIsNeverA500:
    async def test_invalid_utf8_body_is_400(self, api: Client) -> None:
        """A body that is not UTF-8 gets a 400 problem saying so, not a 500."""
        response = await api.post("/v1/tasks/research", content=b'{"topic": "ab\xff\xfecdef"}', headers=JSON)

        assert "UTF-8" in problem_of(response, 400)["detail"]

    async def test_deeply_nested_body_is_400(self, api: Client) -> None:
        """A field holding an array nested 5,000 deep gets a 400 problem, not a RecursionError 500."""
        body = b'{"topic": ' + b"[" * 5000 + b"]" * 5000 + b"}"

        response = await api.post("/v1/tasks/research", content=body, headers=JSON)

        assert "nested" in problem_of(response, 400)["detail"]

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
    )
    async def test_body_that_is_not_json_is_415(self, api: Client, content_type: str) -> None:
        """A body sent as another media type gets 415 naming the type to use, and creates nothing."""
        response = await api.post(
            "/v1/tasks/research", content=b'{"topic": "wind farms"}', headers={**ACME, "Content-Type": content_type}
        )

        assert "application/json" in problem_of(response, 415)["detail"]
        assert (await api.get("/v1/tasks", headers=ACME)).json()["items"] == []

    @pytest.mark.slow
    def test_oversized_headers_are_refused_by_the_server_not_500(self, settings: Settings) -> None:
        """Through the real server (hypercorn), headers too large to read get a 4xx, never a 5xx."""
        port = free_port()
        env = service_env(settings.redis.url, None)
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"{url}/health/live", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "API did not start"
                    time.sleep(0.1)
            for size in (20_000, 100_000):
                response = httpx.get(f"{url}/v1/tasks", headers={**ACME, "X-Padding": "a" * size})
                assert 200 <= response.status_code < 500, (size, response.status_code)
        finally:
            server.terminate()
            server.wait(timeout=20)


class TestProblemsNameEveryField:
    async def test_every_invalid_field_is_reported(self, api: Client) -> None:
        """Three invalid fields give three errors, each naming its field; enums list their allowed values."""
        body = {"topic": "ab", "depth": "deep", "language": "de"}

        problem = problem_of(await api.post("/v1/tasks/research", json=body, headers=ACME), 400)

        errors = {e["field"]: e for e in problem["errors"]}
        assert set(errors) == {"topic", "depth", "language"}
        assert all(e["source"] == "body" for e in errors.values())
        assert "'basic', 'standard', 'comprehensive'" in errors["depth"]["message"]
        assert "'en', 'ru'" in errors["language"]["message"]
        assert all(name in problem["detail"] for name in errors)

    async def test_unknown_and_invalid_fields_together(self, api: Client) -> None:
        """An unknown field and an invalid one are both reported."""
        body = {"company": "A", "horizon": "forever", "colour": "red"}

        problem = problem_of(await api.post("/v1/tasks/investment", json=body, headers=ACME), 400)

        assert {e["field"] for e in problem["errors"]} == {"company", "horizon", "colour"}

    async def test_empty_body_says_what_the_body_should_be(self, api: Client) -> None:
        """An empty body is told a JSON object is expected and which fields it has, not `data: 'data'`."""
        response = await api.post("/v1/tasks/research", content=b"", headers=JSON)

        problem = problem_of(response, 400)
        assert problem["detail"].startswith("request body: expected a JSON object")
        assert "topic (required)" in problem["detail"]
        assert "'data'" not in response.text

    async def test_query_errors_say_query_and_list_allowed_values(self, api: Client) -> None:
        """A bad query parameter is reported with source "query"; an enum parameter lists its values."""
        problem = problem_of(await api.get("/v1/tasks", params={"limit": 0, "status": "done"}, headers=ACME), 400)

        errors = {e["field"]: e for e in problem["errors"]}
        assert set(errors) == {"limit", "status"}
        assert {e["source"] for e in errors.values()} == {"query"}
        assert "'queued', 'running'" in errors["status"]["message"]

    async def test_header_errors_name_the_header(self, api: Client) -> None:
        """An invalid Idempotency-Key is reported under its header name, with source "header"."""
        headers = {**ACME, "Idempotency-Key": "key\x7f"}

        problem = problem_of(await api.post("/v1/tasks/swot", json={"company": "Acme"}, headers=headers), 400)

        assert [(e["field"], e["source"]) for e in problem["errors"]] == [("Idempotency-Key", "header")]

    async def test_every_400_has_one_title(self, api: Client) -> None:
        """Body, query, cursor and JSON syntax problems all carry the same title."""
        responses = [
            await api.post("/v1/tasks/research", json={"topic": "ab"}, headers=ACME),
            await api.post("/v1/tasks/research", content=b"{not json", headers=JSON),
            await api.get("/v1/tasks", params={"limit": 0}, headers=ACME),
            await api.get("/v1/tasks", params={"cursor": "garbage!"}, headers=ACME),
        ]

        assert {problem_of(r, 400)["title"] for r in responses} == {"Invalid Request"}

    async def test_too_large_body_states_the_limit(self, api: Client, settings: Settings) -> None:
        """A 413 says how many bytes the server accepts."""
        body = b'{"topic": "' + b"x" * (settings.api.max_body_bytes + 1) + b'"}'

        problem = problem_of(await api.post("/v1/tasks/research", content=body, headers=JSON), 413)

        assert f"{settings.api.max_body_bytes} bytes" in problem["detail"]


class TestReport:
    async def test_markdown_and_metrics_say_charset_once(self, api: Client, settings: Settings) -> None:
        """The report and /metrics carry one charset parameter in their Content-Type."""
        task = await completed_task(api, settings)

        report = await api.get(f"/v1/tasks/{task['id']}/report", headers=ACME)
        scrape = await api.get("/metrics")

        assert report.headers["content-type"] == "text/markdown; charset=utf-8"
        assert report.text.startswith("# Wind at sea")
        assert scrape.headers["content-type"].count("charset") == 1

    @pytest.mark.parametrize(
        ("params", "accept", "expected"),
        [
            ({"format": "md"}, "application/json", "text/markdown"),
            ({"format": "json"}, None, "application/json"),
            ({}, "application/json", "application/json"),
            ({}, "text/*", "text/markdown"),
        ],
    )
    async def test_format_and_accept_choose_the_type(
        self, api: Client, settings: Settings, params: dict[str, str], accept: str | None, expected: str
    ) -> None:
        """`?format=` wins over `Accept`; both choose between markdown and the JSON report."""
        task = await completed_task(api, settings)
        headers = {**ACME, **({"Accept": accept} if accept else {})}

        response = await api.get(f"/v1/tasks/{task['id']}/report", params=params, headers=headers)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith(expected)

    @pytest.mark.parametrize(("params", "accept"), [({}, "application/xml"), ({"format": "docx"}, None)])
    async def test_a_type_it_cannot_produce_is_406(
        self, api: Client, settings: Settings, params: dict[str, str], accept: str | None
    ) -> None:
        """Asking for a type the report is not available in gets 406 listing the types it has, not markdown."""
        task = await completed_task(api, settings)
        headers = {**ACME, **({"Accept": accept} if accept else {})}

        problem = problem_of(await api.get(f"/v1/tasks/{task['id']}/report", params=params, headers=headers), 406)

        assert "pdf" in problem["detail"]


class TestPublicTaskView:
    async def test_submit_get_cancel_show_only_the_public_fields(self, api: Client) -> None:
        """Submit, get and cancel answer with the public view: no fencing token, job id, worker or tenant."""
        submitted = await api.post("/v1/tasks/research", json={"topic": "wind farms at sea"}, headers=ACME)
        task_id = submitted.json()["id"]
        got = await api.get(f"/v1/tasks/{task_id}", headers=ACME)
        cancelled = await api.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)

        for response in (submitted, got, cancelled):
            assert set(response.json()) == set(TaskView.__struct_fields__), response.text
        assert cancelled.json()["status"] == "cancelled"

    async def test_list_items_are_summaries_without_the_report(self, api: Client, settings: Settings) -> None:
        """List items carry the report's title, not its body, and no internal fields."""
        task = await completed_task(api, settings)

        items = (await api.get("/v1/tasks", headers=ACME)).json()["items"]

        assert [i["id"] for i in items] == [task["id"]]
        assert set(items[0]) == set(TaskSummary.__struct_fields__)
        assert items[0]["title"] == "Wind at sea"
        assert not INTERNAL & set(items[0])

    async def test_document_shows_the_public_types(self, api: Client) -> None:
        """The OpenAPI document types tasks as TaskView and list items as TaskSummary."""
        doc = (await api.get("/schema/openapi.json")).json()

        paths, schemas = doc["paths"], doc["components"]["schemas"]
        refs = [
            paths["/v1/tasks/research"]["post"]["responses"]["202"],
            paths["/v1/tasks/{task_id}"]["get"]["responses"]["200"],
            paths["/v1/tasks/{task_id}/cancel"]["post"]["responses"]["200"],
        ]
        assert {r["content"]["application/json"]["schema"]["$ref"] for r in refs} == {"#/components/schemas/TaskView"}
        assert schemas["TaskPage"]["properties"]["items"]["items"]["$ref"] == "#/components/schemas/TaskSummary"
        assert not INTERNAL & set(schemas["TaskView"]["properties"])


class TestDocumentAndDocs:
    async def test_openapi_document_is_valid_openapi_3_1(self, api: Client) -> None:
        """The document validates with openapi-spec-validator, so generators and linters accept it."""
        doc = (await api.get("/schema/openapi.json")).json()

        validate(doc)
        assert doc["paths"]["/v1/tasks/swot"]["post"]["responses"]["202"]["headers"]["Location"]["schema"]

    async def test_docs_page_loads_everything_from_the_api_itself(self, api: Client) -> None:
        """/schema references no other host, and every asset it references is served."""
        page = await api.get("/schema")

        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assert urls
        assert not [u for u in urls if "//" in u], urls
        for url in urls:
            assert (await api.get(url)).status_code == 200, url


class TestEveryRequestIsLoggedAndCounted:
    async def test_refused_and_unknown_requests_get_one_line_with_their_status(self, api: Client) -> None:
        """401s, unknown routes and wrong methods are logged once each with the status they really got."""
        with capture_logs() as logs:
            await api.get("/v1/tasks")
            await api.get("/v1/no-such-thing", headers=ACME)
            await api.delete("/v1/tasks", headers=ACME)
            await api.get("/v1/tasks", headers=ACME)

        lines = [line for line in logs if line["event"] == "http_request"]
        assert [(line["path"], line["status"]) for line in lines] == [
            ("/v1/tasks", 401),
            ("/v1/no-such-thing", 404),
            ("/v1/tasks", 405),
            ("/v1/tasks", 200),
        ]
        # The tenant is known once the key was checked; no route means no key check.
        assert [line.get("tenant") for line in lines] == [None, None, None, "acme"]

    async def test_refused_requests_have_their_own_metric_series(self, api: Client) -> None:
        """A 401 is counted as status_code="401", not as a 500 or not at all."""
        await api.post("/v1/tasks/swot", json={"company": "Acme"})

        scrape = (await api.get("/metrics")).text

        assert re.search(r'agentfarm_http_requests_total\{[^}]*path="/v1/tasks/swot"[^}]*status_code="401"', scrape)

    def test_openai_usage_lines_are_not_logged_at_info(self) -> None:
        """crewai's per-call `OpenAI API usage` root-logger line is dropped; other root lines still show."""
        root = logging.getLogger()
        saved_handlers, saved_level, saved_config = root.handlers[:], root.level, structlog.get_config()
        out = io.StringIO()
        try:
            sys.stderr, real_stderr = out, sys.stderr
            try:
                configure_logging("INFO", "json")
            finally:
                sys.stderr = real_stderr
            logging.info("OpenAI API usage: {'total_tokens': 12}")
            logging.info("something else")
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            structlog.configure(**saved_config)
        lines = [msgspec.json.decode(line)["event"] for line in out.getvalue().splitlines()]
        assert lines == ["something else"]


class TestStartsWithoutRedis:
    async def test_starts_while_redis_is_down_and_serves_once_it_is_up(self) -> None:
        """With Redis down at start-up the API starts (live 200, ready 503, others 503) and serves once it is up."""
        redis = RedisServer(appendonly=False)
        settings = load_settings(service_env(redis.url, None), env_file=None)
        try:
            async with AsyncTestClient(create_app(settings)) as api:
                assert (await api.get("/health/live")).status_code == 200
                assert (await api.get("/health/ready")).status_code == 503
                down = await api.post("/v1/tasks/research", json={"topic": "wind farms at sea"}, headers=ACME)
                assert "Redis" in problem_of(down, 503)["detail"]

                redis.start()
                assert (await api.get("/health/ready")).json()["redis"] == "ok"
                up = await api.post("/v1/tasks/research", json={"topic": "wind farms at sea"}, headers=ACME)
                assert up.status_code == 202, up.text
        finally:
            redis.close()

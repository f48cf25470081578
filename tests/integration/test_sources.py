"""Research that cites what it read, end to end: API -> worker -> stub SearXNG -> stub web server -> gate.

Everything is real and on loopback: a redis-server, a worker process, the
scripted LLM, a stub SearXNG (``tests/support/search_server.py``) and a stub web
server with saved articles (``tests/support/page_server.py``). The page server
is on 127.0.0.1, so the grounded cluster sets ``AGENTFARM_FETCH_ALLOW_PRIVATE``;
the SSRF test runs a cluster without it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from crews.sources.extract import extract
from tests.conftest import ACME
from tests.support.cluster import Cluster
from tests.support.llm_server import Reply, ScriptedLLM
from tests.support.page_server import PageServer
from tests.support.polling import eventually, wait_finished
from tests.support.redis_server import free_port
from tests.support.search_server import SearchServer

Client = AsyncTestClient  # type: ignore[type-arg]
ARTICLES = ["en_batteries", "en_charging", "en_market", "en_supply"]


@pytest.fixture(scope="module")
def grounded(
    tmp_path_factory: pytest.TempPathFactory, llm_server: ScriptedLLM, search_server: SearchServer
) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("sources"),
        llm_server,
        AGENTFARM_SEARCH_BACKEND="searxng",
        AGENTFARM_SEARCH_URL=search_server.base_url,
        AGENTFARM_SEARCH_TIMEOUT_S="1",
        AGENTFARM_FETCH_ALLOW_PRIVATE="true",
        AGENTFARM_FETCH_CONCURRENCY="2",
        AGENTFARM_RESEARCH_MAX_ATTEMPTS="2",
        AGENTFARM_WORKER_METRICS_PORT=str(free_port()),
    )
    cluster.start_worker()
    yield cluster
    cluster.close()


@pytest.fixture(autouse=True)
def _clean(llm_server: ScriptedLLM, search_server: SearchServer, page_server: PageServer) -> Iterator[None]:
    llm_server.reset()
    search_server.reset()
    page_server.reset()
    search_server.urls = [page_server.url(name) for name in ARTICLES]
    yield
    search_server.reset()
    page_server.reset()


async def submit(api: Client, body: dict[str, Any]) -> str:
    response = await api.post("/v1/tasks/research", json=body, headers=ACME)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def report_reply(page_two_url: str) -> Reply:
    """The writer's structured answer: two good citations, a link to a read page, and two bad ones."""
    draft = {
        "title": "Solid-state batteries",
        "summary": "Prototype cells store about 40 percent more energy per kilogram [1]. "
        "Investors poured money into the sector [3]. Experts disagree about everything [7].",
        "sections": [
            {
                "heading": "Charging",
                "body": f"Chargers slow down above 80 percent, as [this page]({page_two_url}) explains. "
                "More at https://unread.example/secret-report.",
            }
        ],
    }
    return Reply(content=json.dumps(draft))


def worker_metric(cluster: Cluster, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{cluster.env['AGENTFARM_WORKER_METRICS_PORT']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


class TestGroundedResearch:
    async def test_report_cites_only_pages_read_in_this_task(
        self, grounded: Cluster, llm_server: ScriptedLLM, page_server: PageServer, search_server: SearchServer
    ) -> None:
        """Sources are pages the page server served during the task, quotes are in those pages, every [n]
        resolves, and the gate removed the missing id [7] and the unread URL (2 removals, counted)."""
        # basic: the query plan (scripted default: 2 queries), the researcher, then the writer.
        llm_server.script(Reply(), Reply(), report_reply(page_server.url("en_charging")))
        removed_before = worker_metric(grounded, "agentfarm_citations_removed_total")
        began = time.time()
        async with grounded.api() as api:
            task_id = await submit(api, {"topic": "solid-state batteries for cars", "depth": "basic"})
            final, _ = await wait_finished(api, task_id, ACME, timeout_s=60, interval_s=0.02)
            assert final["status"] == "completed", final["error"]
            result = final["result"]
            assert result["grounded"] is True
            stream = await api.get(f"/v1/tasks/{task_id}/events", headers=ACME)  # the whole log, replayed
        served = {s.path for s in page_server.requests(since=began)}
        for source in result["sources"]:
            path = "/" + source["url"].split("/", 3)[3]
            assert path in served, f"{source['url']} was not read in this task"
            page = extract(page_server.html(path.rsplit("/", 1)[1]))
            assert page is not None and source["quote"] in page.text
        assert [s["id"] for s in result["sources"]] == list(range(1, len(result["sources"]) + 1))
        cited = {int(n) for n in re.findall(r"(?<!\\)\[(\d+)\]", result["markdown"])}
        assert cited == {s["id"] for s in result["sources"]}
        assert "[7]" not in result["markdown"] and "unread.example" not in result["markdown"]
        assert result["markdown"].rstrip().splitlines()[-len(result["sources"]) - 2] == "## Sources"
        assert final["usage"]["searches"] == 2 == len(search_server.received(since=began))
        assert final["usage"]["pages_read"] == 3
        log = [json.loads(line[len("data: ") :]) for line in stream.text.splitlines() if line.startswith("data: ")]
        assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
        stages = {e["stage"] for e in log}
        assert any(s.startswith("searching: ") for s in stages), stages
        assert any(s.startswith("reading: 127.0.0.1") for s in stages), stages
        read = [e["source"]["url"] for e in log if e["type"] == "source"]  # one event per page read
        assert len(read) == len(set(read)) == final["usage"]["pages_read"]
        assert {s["url"] for s in result["sources"]} <= set(read)
        assert all(e["source"]["title"] for e in log if e["type"] == "source")
        assert await eventually(
            lambda: worker_metric(grounded, "agentfarm_citations_removed_total") - removed_before == 2, 5
        )

    async def test_comprehensive_runs_more_queries_than_basic(
        self, grounded: Cluster, llm_server: ScriptedLLM, search_server: SearchServer
    ) -> None:
        counts: dict[str, int] = {}
        async with grounded.api() as api:
            for depth in ("basic", "comprehensive"):
                llm_server.reset()
                plan = {"queries": [f"solid-state battery query {n}" for n in range(1, 7)]}
                llm_server.script(Reply(content=json.dumps(plan)))
                began = time.time()
                task_id = await submit(api, {"topic": "solid-state batteries", "depth": depth})
                final, _ = await wait_finished(api, task_id, ACME, timeout_s=90)
                assert final["status"] == "completed", final["error"]
                counts[depth] = len(search_server.received(since=began))
                assert final["usage"]["searches"] == counts[depth]
        assert counts == {"basic": 2, "comprehensive": 6}

    @pytest.mark.parametrize(("mode", "message"), [("error", "answered HTTP 500"), ("hang", "no answer within 1 s")])
    async def test_failing_backend_is_retried_then_fails_clearly(
        self, grounded: Cluster, search_server: SearchServer, mode: str, message: str
    ) -> None:
        search_server.mode, search_server.hang_s = mode, 20
        began = time.monotonic()
        async with grounded.api() as api:
            task_id = await submit(api, {"topic": "solid-state batteries", "depth": "basic"})
            final, seen = await wait_finished(api, task_id, ACME, timeout_s=60, interval_s=0.02)
        assert "retrying" in {s["status"] for s in seen}
        assert final["status"] == "failed" and final["attempt"] == 2
        assert final["error"]["type"] == "search_failed"
        assert "searxng" in final["error"]["message"] and message in final["error"]["message"]
        assert time.monotonic() - began < 30

    async def test_cancel_during_reading_stops_all_further_fetches(
        self, grounded: Cluster, search_server: SearchServer, page_server: PageServer
    ) -> None:
        page_server.slow_s = 1.5
        search_server.urls = [f"{page_server.base_url}/slow/{name}" for name in ARTICLES]
        async with grounded.api() as api:
            task_id = await submit(api, {"topic": "solid-state batteries", "depth": "comprehensive"})

            async def reading() -> bool:
                task = (await api.get(f"/v1/tasks/{task_id}", headers=ACME)).json()
                return str(task["stage"]).startswith("reading:")

            deadline = time.monotonic() + 30
            while not await reading():
                assert time.monotonic() < deadline, "the task never started reading"
            assert (await api.post(f"/v1/tasks/{task_id}/cancel", headers=ACME)).status_code == 200
            cancelled_at = time.time()
            final, _ = await wait_finished(api, task_id, ACME)
        assert final["status"] == "cancelled"
        # A read that passed its stop point before the cancel may still be arriving (resolve, connect) as the
        # cancel returns: allow that much in flight. Any fetch started after the cancel would arrive later,
        # once a slow page (1.5 s) freed a slot: watched for longer than one slow page.
        in_flight_s = 0.3
        assert not await eventually(lambda: bool(page_server.requests(since=cancelled_at + in_flight_s)), 2.5)


class TestSsrf:
    async def test_private_targets_are_never_fetched_and_the_task_fails_no_sources(
        self,
        make_cluster: Callable[..., Cluster],
        search_server: SearchServer,
        page_server: PageServer,
    ) -> None:
        """Results point at loopback (the page server itself), cloud metadata and a name that resolves to
        loopback, redirecting there: none is requested. (A public host redirecting to loopback needs the
        internet or a routed transport: that case is ``tests/unit/test_sources_reader.py``.)"""
        port = page_server.base_url.rsplit(":", 1)[1]
        search_server.urls = [
            page_server.url("en_batteries"),
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            f"http://localhost:{port}/redirect?to={page_server.url('en_charging')}",
        ]
        cluster = make_cluster(AGENTFARM_SEARCH_BACKEND="searxng", AGENTFARM_SEARCH_URL=search_server.base_url)
        async with cluster.worker_in_process(), cluster.api() as api:
            task_id = await submit(api, {"topic": "solid-state batteries", "depth": "basic"})
            final, _ = await wait_finished(api, task_id, ACME, timeout_s=60)
        assert final["status"] == "failed"
        assert final["error"]["type"] == "no_sources", final["error"]
        assert final["attempt"] == 1, "no_sources is permanent"
        assert page_server.requests() == []
        assert final["usage"]["pages_read"] == 0 and final["usage"]["searches"] == 2

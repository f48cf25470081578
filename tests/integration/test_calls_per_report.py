"""How many LLM calls each kind and depth makes: the README's table, checked against the scripted server.

Without a search backend a report costs one call per task of its crew (the last
one returns the structured report); with one, a single structured call plans
the queries first. No call adds nothing: every one is a planned step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ACME
from tests.support.cluster import Cluster
from tests.support.llm_server import ScriptedLLM, count_tokens
from tests.support.page_server import PageServer
from tests.support.polling import wait_finished
from tests.support.search_server import SearchServer

README = Path(__file__).resolve().parents[2] / "README.md"
BODIES = {
    "research": {"topic": "Calls per report: heat storage in sand"},
    "swot": {"company": "Calls per report Oy"},
    "investment": {"company": "Calls per report Oy", "horizon": "medium"},
    "technical_review": {"subject": "Calls per report: the billing service"},
}
PATHS = {"research": "research", "swot": "swot", "investment": "investment", "technical_review": "technical-review"}


def documented() -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, depth) -> (calls without search, calls with search), from the README's table."""
    rows = re.findall(r"^\| `(\w+)` \| `?(\w+|—)`? \| (\d+) \| (\d+) \|", README.read_text("utf-8"), re.MULTILINE)
    return {(kind, depth): (int(plain), int(searched)) for kind, depth, plain, searched in rows}


CASES = sorted(documented())


@pytest.fixture(scope="module")
def clusters(
    tmp_path_factory: pytest.TempPathFactory,
    llm_server: ScriptedLLM,
    search_server: SearchServer,
    page_server: PageServer,
) -> Iterator[dict[bool, Cluster]]:
    plain = Cluster(tmp_path_factory.mktemp("plain"), llm_server)
    searched = Cluster(
        tmp_path_factory.mktemp("searched"),
        llm_server,
        AGENTFARM_SEARCH_BACKEND="searxng",
        AGENTFARM_SEARCH_URL=search_server.base_url,
        AGENTFARM_FETCH_ALLOW_PRIVATE="true",
    )
    for cluster in (plain, searched):
        cluster.start_worker()
    yield {False: plain, True: searched}
    plain.close()
    searched.close()


def test_the_table_covers_every_kind_and_research_depth() -> None:
    kinds = {kind for kind, _ in CASES}
    assert kinds == set(BODIES)
    assert {depth for kind, depth in CASES if kind == "research"} == {"basic", "standard", "comprehensive"}


@pytest.mark.parametrize("search", [False, True], ids=["no-search", "searxng"])
@pytest.mark.parametrize(("kind", "depth"), CASES, ids=[f"{k}-{d}" for k, d in CASES])
async def test_a_report_makes_the_documented_number_of_calls(
    clusters: dict[bool, Cluster],
    llm_server: ScriptedLLM,
    search_server: SearchServer,
    page_server: PageServer,
    kind: str,
    depth: str,
    search: bool,
) -> None:
    llm_server.reset()
    search_server.reset()
    search_server.urls = [page_server.url(name) for name in ("en_batteries", "en_charging", "en_market")]
    body = {**BODIES[kind], **({"depth": depth} if kind == "research" else {})}
    async with clusters[search].api() as api:
        response = await api.post(f"/v1/tasks/{PATHS[kind]}", json=body, headers=ACME)
        final, _ = await wait_finished(api, response.json()["id"], ACME)

    assert final["status"] == "completed", final["error"]
    calls = llm_server.completed()
    assert final["usage"]["llm_calls"] == len(calls) == documented()[(kind, depth)][int(search)]
    assert (final["usage"]["searches"] > 0) is search, "the search stage ran only with a backend"
    assert final["usage"]["prompt_tokens"] == sum(count_tokens(c.request.text) for c in calls)
    print(  # the numbers for the README's table (pytest -s)
        f"\n| {kind} | {depth} | search={search} | calls {len(calls)} | prompt {final['usage']['prompt_tokens']} "
        f"| completion {final['usage']['completion_tokens']} |"
    )

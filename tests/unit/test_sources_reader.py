"""Search backends and the page reader against real loopback servers; SSRF refusals; stop points."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from crews.control import CrewStopped
from crews.failures import classify
from crews.sources.backends import SearxngBackend
from crews.sources.config import DepthPlan, FetchConfig
from crews.sources.errors import NoSources, SourceError
from crews.sources.reader import USER_AGENT, FetchFailed, page_client, read_page
from crews.sources.stage import Counters, gather
from tests.support.page_server import PageServer
from tests.support.search_server import SearchServer

PUBLIC_IP = "93.184.215.14"  # a public address this test never reaches: the transport below routes it


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def search() -> Iterator[SearchServer]:
    server = SearchServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _clean(pages: PageServer, search: SearchServer) -> None:
    pages.reset()
    search.reset()


ALLOW = FetchConfig(allow_private=True, timeout_s=5)
DENY = FetchConfig(allow_private=False, timeout_s=5)


class TestReader:
    async def test_reads_an_article_with_its_user_agent(self, pages: PageServer) -> None:
        async with page_client() as client:
            page = await read_page(client, pages.url("en_charging"), ALLOW)
        assert page.title == "Fast charging and the limits of battery chemistry"
        assert "Lithium plating reduces capacity" in page.text
        assert [s.user_agent for s in pages.requests()] == [USER_AGENT]
        assert USER_AGENT.startswith("AgentFarm/")

    @pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "[::1]", "10.0.0.7"])
    async def test_private_addresses_are_refused_before_any_request(self, pages: PageServer, host: str) -> None:
        port = pages.base_url.rsplit(":", 1)[1]
        async with page_client() as client:
            with pytest.raises(FetchFailed) as failed:
                await read_page(client, f"http://{host}:{port}/articles/en_charging", DENY)
        assert failed.value.reason == "refused"
        assert pages.requests() == []

    async def test_a_name_resolving_to_loopback_is_refused(self, pages: PageServer) -> None:
        """DNS says loopback for a harmless-looking name: the check sees the answer, not the name."""
        port = pages.base_url.rsplit(":", 1)[1]

        async def resolve(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        async with page_client() as client:
            with pytest.raises(FetchFailed, match="loopback"):
                await read_page(client, f"http://news.example:{port}/articles/en_charging", DENY, resolve=resolve)
        assert pages.requests() == []

    async def test_a_public_host_that_redirects_to_loopback_is_not_followed(self, pages: PageServer) -> None:
        """``news.example`` resolves (injected DNS) to a public address, which passes the check; the
        connection goes to that checked address, and only the test's transport routes it to the loopback
        page server (standing in for the internet, which the test does not use). That server answers
        with a redirect to 127.0.0.1: the reader re-checks the hop and refuses it, so the loopback
        article is never requested, only the redirect."""
        port = int(pages.base_url.rsplit(":", 1)[1])
        connected: list[str] = []

        class Internet(httpx.AsyncBaseTransport):
            def __init__(self) -> None:
                self._real = httpx.AsyncHTTPTransport()

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                connected.append(request.url.host)
                assert request.url.host == PUBLIC_IP, "the reader connects only to the address it checked"
                request.url = request.url.copy_with(host="127.0.0.1")
                return await self._real.handle_async_request(request)

        async def resolve(host: str, port: int) -> list[str]:
            return [PUBLIC_IP]

        loopback = f"http://127.0.0.1:{port}/articles/en_charging"
        async with httpx.AsyncClient(transport=Internet(), trust_env=False) as client:
            with pytest.raises(FetchFailed) as failed:
                await read_page(client, f"http://news.example:{port}/redirect?to={loopback}", DENY, resolve=resolve)
        assert failed.value.reason == "refused"
        assert connected == [PUBLIC_IP]
        assert [s.path for s in pages.requests()] == ["/redirect"]

    async def test_redirects_are_followed_and_each_hop_checked(self, pages: PageServer) -> None:
        async with page_client() as client:
            page = await read_page(client, f"{pages.base_url}/redirect?to=/articles/en_supply", ALLOW)
        assert page.url.endswith("/articles/en_supply")
        assert [s.path for s in pages.requests()] == ["/redirect", "/articles/en_supply"]

    async def test_size_cap(self, pages: PageServer) -> None:
        async with page_client() as client:
            with pytest.raises(FetchFailed) as failed:
                await read_page(client, pages.url("en_market"), FetchConfig(allow_private=True, max_bytes=1024))
        assert failed.value.reason == "too_large"

    async def test_time_cap(self, pages: PageServer) -> None:
        pages.slow_s = 3
        began = time.monotonic()
        async with page_client() as client:
            with pytest.raises(FetchFailed) as failed:
                await read_page(
                    client, f"{pages.base_url}/slow/en_market", FetchConfig(allow_private=True, timeout_s=0.5)
                )
        assert failed.value.reason == "timeout" and time.monotonic() - began < 2


class TestSearxng:
    async def test_results(self, search: SearchServer) -> None:
        search.urls = ["https://a.example/1", "https://b.example/2"]
        async with httpx.AsyncClient() as client:
            found = await SearxngBackend(url=search.base_url, timeout_s=2).search(client, "q", language="ru", count=5)
        assert [r.url for r in found] == search.urls
        assert search.queries[0][:2] == ("q", "ru")

    @pytest.mark.parametrize(
        ("mode", "message"),
        [("empty", "unresponsive engines: duckduckgo: CAPTCHA"), ("error", "HTTP 500"), ("no_json", "json format")],
    )
    async def test_failures_name_the_backend(self, search: SearchServer, mode: str, message: str) -> None:
        search.mode = mode
        async with httpx.AsyncClient() as client:
            with pytest.raises(SourceError, match=message) as failed:
                await SearxngBackend(url=search.base_url, timeout_s=2).search(client, "q", language="en", count=5)
        assert str(failed.value).startswith("search backend searxng")
        failure = classify(failed.value)
        assert failure.transient and failure.type == "search_failed"

    async def test_a_hanging_backend_times_out(self, search: SearchServer) -> None:
        search.mode, search.hang_s = "hang", 5
        began = time.monotonic()
        async with httpx.AsyncClient() as client:
            with pytest.raises(SourceError, match=r"no answer within 0\.5 s"):
                await SearxngBackend(url=search.base_url, timeout_s=0.5).search(client, "q", language="en", count=5)
        assert time.monotonic() - began < 2


class _Observer:
    def __init__(self, stop_after_reads: int | None = None) -> None:
        self.stages: list[str] = []
        self.sources: list[str] = []
        self.stop_after_reads = stop_after_reads

    def stop_point(self) -> None:
        reads = sum(1 for s in self.stages if s.startswith("reading:"))
        if self.stop_after_reads is not None and reads >= self.stop_after_reads:
            raise CrewStopped("cancelled")

    def on_progress(self, progress: int, stage: str) -> None:
        self.stages.append(stage)

    def on_source(self, url: str, title: str) -> None:
        self.sources.append(url)


class TestStage:
    def test_gathers_numbered_sources_and_shows_its_stage(self, search: SearchServer, pages: PageServer) -> None:
        search.urls = [pages.url(n) for n in ("en_batteries", "en_charging", "en_market", "en_supply")]
        observer, counters = _Observer(), Counters()
        backend = SearxngBackend(url=search.base_url, timeout_s=2)
        gathered = gather(
            backend, ["a", "b"], DepthPlan(2, 3), fetch=ALLOW, observer=observer, counters=counters, language="en"
        )
        assert [s.id for s in gathered.sources] == [1, 2, 3]
        assert (counters.searches, counters.pages_read) == (2, 3)
        assert sorted(observer.sources) == sorted(s.url for s in gathered.sources)  # one source event per page read
        assert observer.stages[:2] == ["searching: a", "searching: b"]
        assert "reading: 127.0.0.1" in {
            s.split(":")[0] + ": " + s.split(": ")[1].split(":")[0] for s in observer.stages
        }

    def test_no_readable_page_is_no_sources(self, search: SearchServer, pages: PageServer) -> None:
        search.urls = ["http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data/"]
        backend = SearxngBackend(url=search.base_url, timeout_s=2)
        with pytest.raises(NoSources) as failed:
            gather(
                backend, ["a"], DepthPlan(1, 3), fetch=DENY, observer=_Observer(), counters=Counters(), language="en"
            )
        failure = classify(failed.value)
        assert failure.type == "no_sources" and not failure.transient

    def test_a_stop_during_reading_stops_every_further_fetch(self, search: SearchServer, pages: PageServer) -> None:
        """Pages are read one at a time and slowly; the stop comes while the first is in flight."""
        pages.slow_s = 1.0
        search.urls = [f"{pages.base_url}/slow/{n}" for n in ("en_batteries", "en_charging", "en_market")]
        backend = SearxngBackend(url=search.base_url, timeout_s=2)
        fetch = FetchConfig(allow_private=True, concurrency=1)
        began = time.monotonic()
        with pytest.raises(CrewStopped):
            gather(
                backend,
                ["a"],
                DepthPlan(1, 3),
                fetch=fetch,
                observer=_Observer(stop_after_reads=1),
                counters=Counters(),
                language="en",
            )
        assert time.monotonic() - began < 1.0, "the in-flight read is cancelled, not waited for"
        time.sleep(1.2)
        assert len(pages.requests()) == 1

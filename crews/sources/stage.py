"""The sources stage of a job: run the planned queries, pick pages, read them, number the excerpts.

It runs in the crew's thread, before the crew, on an event loop of its own
(``gather`` wraps ``asyncio.run``). The job's stop flag is checked before every
search and every page read, and polled while they are in flight, so a cancel
or a time limit stops the stage within a fraction of a second. Searches that
fail are counted and skipped; when every search failed, the first failure is
raised (transient: the job's policy retries). When searches found pages and
not one could be read, the task fails as ``no_sources``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from crews import netguard
from crews.sources import events
from crews.sources.backends import SearchBackend, SearchResult
from crews.sources.config import DepthPlan, FetchConfig
from crews.sources.errors import NoSources, SourceError
from crews.sources.gate import ReadSource
from crews.sources.reader import FetchFailed, Page, page_client, read_page

tracer = trace.get_tracer("agentfarm.crews")
T = TypeVar("T")

_EXCERPT_CHARS = 1500
_STOP_POLL_S = 0.25
# Progress of the task while the stage runs (the crew's tasks start at 5).
_SEARCH_PROGRESS = 2
_READ_PROGRESS = 4


class StageObserver(Protocol):
    def stop_point(self) -> None: ...

    def on_progress(self, progress: int, stage: str) -> None: ...

    def on_source(self, url: str, title: str) -> None: ...


@dataclass
class Counters:
    """What the stage did so far; the runner reads it into the task's usage at any time."""

    searches: int = 0
    pages_read: int = 0
    on_change: Callable[[], None] = lambda: None


@dataclass
class Gathered:
    backend: str
    sources: list[ReadSource] = field(default_factory=list)


def excerpt_of(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """The start of a page's text, cut at a paragraph (or word) boundary: a prefix, verbatim."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    if cut < limit // 2:
        cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > 0 else limit]


def _normal(url: str) -> str:
    return url.split("#", 1)[0].rstrip("/").lower()


def candidates(results: Sequence[Sequence[SearchResult]]) -> list[SearchResult]:
    """Results of every query, interleaved (the best of each first), each URL once."""
    seen: set[str] = set()
    picked: list[SearchResult] = []
    for rank in range(max((len(r) for r in results), default=0)):
        for found in results:
            if rank < len(found) and _normal(found[rank].url) not in seen:
                seen.add(_normal(found[rank].url))
                picked.append(found[rank])
    return picked


@dataclass
class _Stage:
    backend: SearchBackend
    fetch: FetchConfig
    observer: StageObserver
    counters: Counters
    language: str
    resolve: netguard.Resolver = None

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[SearchResult]:
        self.observer.stop_point()
        self.observer.on_progress(_SEARCH_PROGRESS, f"searching: {query}")
        attributes = {"agentfarm.search.backend": self.backend.name, "agentfarm.search.query": query}
        with tracer.start_as_current_span(f"search {self.backend.name}", kind=SpanKind.CLIENT, attributes=attributes):
            span = trace.get_current_span()
            try:
                found = await self.backend.search(client, query, language=self.language, count=count)
            except SourceError as exc:
                outcome = "empty" if "no results" in str(exc) else "error"
                events.search_done(self.backend.name, outcome)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise
            finally:
                self.counters.searches += 1
                self.counters.on_change()
            span.set_attribute("agentfarm.search.results", len(found))
            events.search_done(self.backend.name, "ok")
            return found

    async def read(self, client: httpx.AsyncClient, limit: asyncio.Semaphore, result: SearchResult) -> Page | None:
        async with limit:
            self.observer.stop_point()
            host = result.url.split("/")[2] if result.url.count("/") >= 2 else result.url
            self.observer.on_progress(_READ_PROGRESS, f"reading: {host.rsplit('@', 1)[-1]}")
            with tracer.start_as_current_span("read_page", kind=SpanKind.CLIENT) as span:
                span.set_attribute("url.full", result.url)
                try:
                    page = await read_page(client, result.url, self.fetch, resolve=self.resolve)
                except FetchFailed as exc:
                    events.fetch_failed(exc.reason)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    span.set_attribute("error.type", exc.reason)
                    return None
                span.set_attribute("agentfarm.page.chars", len(page.text))
            self.counters.pages_read += 1
            self.counters.on_change()
            self.observer.on_source(page.url, page.title or result.title)
            return page

    async def watch(self) -> None:
        """Polls the stop flag while searches and reads are in flight (a hanging backend included)."""
        while True:
            await asyncio.sleep(_STOP_POLL_S)
            self.observer.stop_point()


async def _watched(stage: _Stage, work: Sequence[Awaitable[T]]) -> list[T]:
    """The results of ``work``, run together; stopped (and every one cancelled) as soon as the job must stop."""
    futures = [asyncio.ensure_future(w) for w in work]
    together = asyncio.gather(*futures)
    watcher: asyncio.Future[Any] = asyncio.ensure_future(stage.watch())
    try:
        waiting: set[asyncio.Future[Any]] = {together, watcher}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if together.done():
            return together.result()
        watcher.result()  # raises CrewStopped: the watcher only ends that way
        raise AssertionError("the stop watcher ended without a stop")
    finally:
        watcher.cancel()
        for future in futures:
            future.cancel()
        await asyncio.gather(watcher, together, *futures, return_exceptions=True)


async def _gather(stage: _Stage, queries: Sequence[str], plan: DepthPlan) -> Gathered:
    async with httpx.AsyncClient() as search_client:

        async def one(query: str) -> list[SearchResult] | SourceError:
            try:
                return await stage.search(search_client, query, plan.results_per_query)
            except SourceError as exc:
                return exc

        outcomes: list[list[SearchResult] | SourceError] = []
        for query in queries:  # one at a time: the stage shows each query, a backend is not flooded
            outcomes += await _watched(stage, [one(query)])
    found = [o for o in outcomes if not isinstance(o, SourceError)]
    if not found:
        failures = [o for o in outcomes if isinstance(o, SourceError)]
        raise failures[0] if failures else SourceError(stage.backend.name, "no query was planned")
    picked = candidates(found)[: plan.pages * 2]  # a spare for each page that cannot be read
    pages: list[tuple[SearchResult, Page]] = []
    limit = asyncio.Semaphore(stage.fetch.concurrency)
    async with page_client() as client:
        while picked and len(pages) < plan.pages:
            batch, picked = picked[: plan.pages - len(pages)], picked[plan.pages - len(pages) :]
            read = await _watched(stage, [stage.read(client, limit, r) for r in batch])
            pages += [(r, p) for r, p in zip(batch, read, strict=True) if isinstance(p, Page)]
    if not pages:
        raise NoSources(
            f"search backend {stage.backend.name} found {len(candidates(found))} pages and none could be read "
            "(refused addresses, errors or no main text); see agentfarm_source_fetch_errors"
        )
    sources = [
        ReadSource(
            id=index,
            url=page.url,
            title=page.title or result.title,
            text=excerpt_of(page.text),
            aliases=(result.url,),
        )
        for index, (result, page) in enumerate(pages, start=1)
    ]
    return Gathered(backend=stage.backend.name, sources=sources)


def gather(
    backend: SearchBackend,
    queries: Sequence[str],
    plan: DepthPlan,
    *,
    fetch: FetchConfig,
    observer: StageObserver,
    counters: Counters,
    language: str,
    resolve: netguard.Resolver = None,
) -> Gathered:
    """Search, read and number the sources of one task (blocking: call it in the crew's thread)."""
    stage = _Stage(
        backend=backend, fetch=fetch, observer=observer, counters=counters, language=language, resolve=resolve
    )
    return asyncio.run(_gather(stage, queries, plan))


def excerpts_text(sources: Sequence[ReadSource]) -> str:
    """The numbered excerpts the writers work from."""
    blocks = [f"[{s.id}] {s.title} ({s.url})\n{s.text}" for s in sources]
    return "\n\n".join(blocks)

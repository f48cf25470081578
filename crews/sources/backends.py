"""Search backends behind one small interface: a query in, result links out, or a ``SourceError``.

- ``searxng``: self-hosted; ``GET <url>/search?q=...&format=json`` (``search.formats`` must
  include ``json`` in its settings.yml, or it answers 403). A 200 with no results is not a
  success: the error names the engines SearXNG reported in ``unresponsive_engines``.
- ``tavily``: ``POST https://api.tavily.com/search`` with ``Authorization: Bearer <key>``.
- ``brave``: ``GET https://api.search.brave.com/res/v1/web/search`` with ``X-Subscription-Token``.

The backend is the operator's setting and is trusted (no address check); each call has
its own time limit (``AGENTFARM_SEARCH_TIMEOUT_S``). Every failure is a transient
``SourceError`` naming the backend, so the job's retry policy decides what happens next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from crews.sources.config import SearchConfig
from crews.sources.errors import SourceError, SourcesMisconfigured

TAVILY_URL = "https://api.tavily.com"
BRAVE_URL = "https://api.search.brave.com"


@dataclass(frozen=True, slots=True)
class SearchResult:
    url: str
    title: str
    snippet: str


class SearchBackend(Protocol):
    @property
    def name(self) -> str: ...

    async def search(self, client: httpx.AsyncClient, query: str, *, language: str, count: int) -> list[SearchResult]:
        """Up to ``count`` results for ``query``; at least one, or ``SourceError``."""


def _results(backend: str, items: Any, *, snippet_key: str) -> list[SearchResult]:
    if not isinstance(items, list):
        raise SourceError(backend, "the answer has no result list")
    return [
        SearchResult(url=item["url"], title=str(item.get("title") or ""), snippet=str(item.get(snippet_key) or ""))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"].startswith(("http:", "https:"))
    ]


async def _request(backend: str, client: httpx.AsyncClient, request: httpx.Request, timeout_s: float) -> Any:
    try:
        response = await client.send(request, follow_redirects=False)
        body = await response.aread()
    except httpx.TimeoutException:
        raise SourceError(backend, f"no answer within {timeout_s:g} s (AGENTFARM_SEARCH_TIMEOUT_S)") from None
    except httpx.HTTPError as exc:
        raise SourceError(backend, f"cannot be reached ({type(exc).__name__})") from None
    if response.status_code == 403 and backend == "searxng":
        raise SourceError(backend, "answered 403: enable the json format (search.formats) in its settings.yml")
    if response.status_code in (401, 403):
        raise SourceError(backend, f"answered {response.status_code}: check AGENTFARM_SEARCH_API_KEY")
    if response.status_code != 200:
        raise SourceError(backend, f"answered HTTP {response.status_code}")
    try:
        return httpx.Response(200, content=body).json()
    except ValueError:
        raise SourceError(backend, "answered 200 with a body that is not JSON") from None


@dataclass(frozen=True)
class SearxngBackend:
    url: str
    timeout_s: float
    name: str = "searxng"

    async def search(self, client: httpx.AsyncClient, query: str, *, language: str, count: int) -> list[SearchResult]:
        params = {"q": query, "format": "json", "language": language, "pageno": "1"}
        request = client.build_request("GET", self.url.rstrip("/") + "/search", params=params, timeout=self.timeout_s)
        data = await _request(self.name, client, request, self.timeout_s)
        found = _results(self.name, data.get("results") if isinstance(data, dict) else None, snippet_key="content")
        if not found:
            engines = data.get("unresponsive_engines") or [] if isinstance(data, dict) else []
            failed = ", ".join(": ".join(str(p) for p in e) if isinstance(e, list) else str(e) for e in engines)
            detail = f"; unresponsive engines: {failed}" if failed else ""
            raise SourceError(self.name, f"no results for {query!r}{detail}")
        return found[:count]


@dataclass(frozen=True)
class TavilyBackend:
    api_key: str
    timeout_s: float
    url: str = TAVILY_URL
    name: str = "tavily"

    async def search(self, client: httpx.AsyncClient, query: str, *, language: str, count: int) -> list[SearchResult]:
        request = client.build_request(
            "POST",
            self.url.rstrip("/") + "/search",
            json={"query": query, "max_results": count, "search_depth": "basic"},
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=self.timeout_s,
        )
        data = await _request(self.name, client, request, self.timeout_s)
        found = _results(self.name, data.get("results") if isinstance(data, dict) else None, snippet_key="content")
        if not found:
            raise SourceError(self.name, f"no results for {query!r}")
        return found[:count]


@dataclass(frozen=True)
class BraveBackend:
    api_key: str
    timeout_s: float
    url: str = BRAVE_URL
    name: str = "brave"

    async def search(self, client: httpx.AsyncClient, query: str, *, language: str, count: int) -> list[SearchResult]:
        request = client.build_request(
            "GET",
            self.url.rstrip("/") + "/res/v1/web/search",
            params={"q": query, "count": str(count), "search_lang": language},
            headers={"X-Subscription-Token": self.api_key, "Accept": "application/json"},
            timeout=self.timeout_s,
        )
        data = await _request(self.name, client, request, self.timeout_s)
        web = data.get("web") if isinstance(data, dict) else None
        found = _results(self.name, web.get("results") if isinstance(web, dict) else None, snippet_key="description")
        if not found:
            raise SourceError(self.name, f"no results for {query!r}")
        return found[:count]


def backend_of(config: SearchConfig) -> SearchBackend | None:
    """The configured backend, or None for ``none``; settings that cannot work are a permanent error."""
    if config.backend == "none":
        return None
    if config.backend == "searxng":
        if not config.url:
            raise SourcesMisconfigured("AGENTFARM_SEARCH_BACKEND=searxng needs AGENTFARM_SEARCH_URL")
        return SearxngBackend(url=config.url, timeout_s=config.timeout_s)
    if not config.api_key:
        raise SourcesMisconfigured(f"AGENTFARM_SEARCH_BACKEND={config.backend} needs AGENTFARM_SEARCH_API_KEY")
    if config.backend == "tavily":
        return TavilyBackend(api_key=config.api_key, timeout_s=config.timeout_s, url=config.url or TAVILY_URL)
    return BraveBackend(api_key=config.api_key, timeout_s=config.timeout_s, url=config.url or BRAVE_URL)

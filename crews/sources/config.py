"""Settings of the search backend and the page reader (read by ``jobs.settings``, used by the runner).

Depth sets how much is gathered (``PLANS``): queries planned, and pages read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from crews.checked import Checked, env, http_url

Backend = Literal["none", "searxng", "tavily", "brave"]


class SearchConfig(Checked, frozen=True, kw_only=True):
    """Which search backend the sources stage asks (``none``: reports are written from the model's knowledge)."""

    backend: Backend = "none"
    # SearXNG's base URL (its JSON API is GET <url>/search?q=...&format=json); Tavily and Brave have defaults.
    url: Annotated[str | None, env(http_url, "an http(s) URL")] = None
    api_key: Annotated[str | None, env(str, "the search provider's key", secret=True)] = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0

    def __repr__(self) -> str:
        key = "set" if self.api_key else None
        return f"SearchConfig(backend={self.backend!r}, url={self.url!r}, api_key={key})"


class FetchConfig(Checked, frozen=True, kw_only=True):
    """How pages found by a search are read."""

    # Loopback, private, link-local and metadata addresses are refused unless this is set (tests, intranets).
    allow_private: bool = False
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # one page, all its redirects included
    max_bytes: Annotated[int, msgspec.Meta(ge=1024, le=100_000_000)] = 2_000_000
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4  # pages read at once within one task
    max_redirects: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5


class SourcesConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Both, as the runner takes them."""

    search: SearchConfig = SearchConfig()
    fetch: FetchConfig = FetchConfig()


@dataclass(frozen=True, slots=True)
class DepthPlan:
    """How much one task gathers: queries planned and run, and pages read at most."""

    queries: int
    pages: int
    results_per_query: int = 5


# basic 2 queries x 3 pages, standard 4 x 5, comprehensive 6 x 8; kinds without depth use standard.
PLANS: dict[str, DepthPlan] = {
    "basic": DepthPlan(queries=2, pages=3),
    "standard": DepthPlan(queries=4, pages=5),
    "comprehensive": DepthPlan(queries=6, pages=8),
}


def depth_plan(depth: str | None) -> DepthPlan:
    return PLANS.get(depth or "standard", PLANS["standard"])

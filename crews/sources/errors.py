"""Failures of the sources stage, as the job's retry policy sees them (``crews.failures``)."""

from __future__ import annotations


class SourceError(Exception):
    """A search backend failed or answered nothing usable: transient, retried by the job's policy."""

    error_type = "search_failed"

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"search backend {backend}: {detail}")
        self.backend = backend


class NoSources(Exception):
    """A backend is configured and not one page could be read: permanent, never a report from nothing."""

    error_type = "no_sources"


class SourcesMisconfigured(Exception):
    """The search settings cannot work (no URL for SearXNG, no key for Tavily or Brave): permanent."""

    error_type = "sources_misconfigured"

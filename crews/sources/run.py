"""The sources stage as the runner uses it: before the crew (plan, search, read) and after it (the gate).

``prepare`` plans the queries with one structured LLM call in the task's
language (the observer's ``before_llm_call`` first: budgets, rate limits and
stop points apply to it like to every other call), runs the stage and gives
the crew its ``{sources}`` input. ``finish`` passes the writer's draft through
the citation gate and builds the stored report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from opentelemetry import trace

from crews.params import LANGUAGE_NAMES, Params
from crews.results import Report, Section, Usage
from crews.sources import events
from crews.sources.backends import backend_of
from crews.sources.config import SourcesConfig, depth_plan
from crews.sources.gate import ReadSource, apply_gate
from crews.sources.planning import QueryPlan, planning_messages, queries_of
from crews.sources.stage import Counters, StageObserver, excerpts_text, gather
from crews.spec import NO_SOURCES, CrewSpec

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("agentfarm.crews")

_PLANNING_PROGRESS = 1


class _Observer(StageObserver, Protocol):
    """The stage's observer, plus what planning needs: the checks before an LLM call, and usage."""

    def before_llm_call(self) -> None: ...

    def on_usage(self, usage: Usage) -> None: ...


class _LLM(Protocol):
    def call(self, messages: Any, *, response_model: Any = None) -> Any: ...


@dataclass
class Prepared:
    """What the stage gathered: the pages read (numbered as the writers see them) and the crew's input."""

    searched: bool = False
    read: list[ReadSource] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)

    @property
    def inputs(self) -> dict[str, str]:
        return {"sources": excerpts_text(self.read) if self.read else NO_SOURCES}

    def usage(self, llm_usage: Usage) -> Usage:
        """The task's usage: the LLM's, and the searches made and pages read."""
        llm_usage.searches = self.counters.searches
        llm_usage.pages_read = self.counters.pages_read
        return llm_usage


def prepare(
    crew_spec: CrewSpec[Any],
    params: Params,
    llm: _LLM,
    observer: _Observer,
    config: SourcesConfig,
    llm_usage: Callable[[], Usage],
) -> Prepared:
    """Plan, search and read the sources of one task; nothing (and no call) when the backend is ``none``."""
    prepared = Prepared()
    backend = backend_of(config.search)
    if backend is None:
        return prepared
    prepared.searched = True
    prepared.counters.on_change = lambda: observer.on_usage(prepared.usage(llm_usage()))
    plan = depth_plan(getattr(params, "depth", None))
    subject = crew_spec.subject_of(params)
    attributes: dict[str, str | int] = {
        "agentfarm.search.backend": backend.name,
        "agentfarm.sources.queries_planned": plan.queries,
        "agentfarm.sources.pages_planned": plan.pages,
    }
    with tracer.start_as_current_span("gather_sources", attributes=attributes) as span:
        observer.on_progress(_PLANNING_PROGRESS, "planning searches")
        observer.on_usage(prepared.usage(llm_usage()))
        observer.before_llm_call()
        messages = planning_messages(subject, crew_spec.name, LANGUAGE_NAMES[params.language], plan.queries)
        try:
            answer = llm.call(messages, response_model=QueryPlan)
        finally:
            observer.on_usage(prepared.usage(llm_usage()))
        queries = queries_of(answer, subject, plan.queries)
        gathered = gather(
            backend,
            queries,
            plan,
            fetch=config.fetch,
            observer=observer,
            counters=prepared.counters,
            language=params.language,
        )
        prepared.read = gathered.sources
        span.set_attribute("agentfarm.sources.searches", prepared.counters.searches)
        span.set_attribute("agentfarm.sources.pages_read", prepared.counters.pages_read)
    log.info("sources_gathered", backend=backend.name, queries=len(queries), pages=len(prepared.read))
    return prepared


def finish(
    kind: str, language: str, title: str, summary: str, sections: Sequence[tuple[str, str]], prepared: Prepared
) -> Report:
    """The report as stored: every citation checked against the pages read, sources numbered from 1."""
    gated = apply_gate(title, summary, [body for _, body in sections], prepared.read)
    events.citations_removed(kind, gated.removed)
    span = trace.get_current_span()
    span.set_attribute("agentfarm.citations.removed", gated.removed)
    span.set_attribute("agentfarm.citations.sources", len(gated.sources))
    if gated.removed:
        log.info("citations_removed", count=gated.removed, kept=len(gated.sources))
    return Report.build(
        title=gated.title,
        summary=gated.summary,
        sections=[Section(heading=h, body=b) for (h, _), b in zip(sections, gated.bodies, strict=True)],
        sources=gated.sources,
        grounded=bool(gated.sources),
        searched=prepared.searched,
        language=language,
    )

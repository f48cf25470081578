"""The structured result every crew returns."""

from __future__ import annotations

import msgspec


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """One section of a report: a heading and a markdown body."""

    heading: str
    body: str


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """A page the task read and the report cites as ``[id]``; ``quote`` is a passage taken from that page."""

    id: int
    url: str
    title: str
    quote: str


# The heading of the sources list and the note of a report written without sources, per language.
_SOURCES_HEADING = {"en": "Sources", "ru": "Источники"}
_UNGROUNDED_NOTE = {
    "en": "_No sources were searched or read for this report: it is written from the model's own knowledge._",
    "ru": "_Для этого отчёта источники не искались и не читались: он написан по знаниям самой модели._",
}
_UNCITED_NOTE = {
    "en": "_Pages were read for this report, but it cites none of them: treat it as the model's own account._",
    "ru": "_Для отчёта были прочитаны страницы, но он не ссылается ни на одну: это изложение самой модели._",
}


def _plain(text: str) -> str:
    return " ".join(text.split()).replace("[", "\\[").replace("]", "\\]")


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """A finished report: title, summary, sections, the whole as markdown, and the sources it cites."""

    title: str
    summary: str
    sections: list[Section]
    markdown: str
    sources: list[Source] = msgspec.field(default_factory=list)
    grounded: bool = False  # whether the report was written from pages read for it

    @classmethod
    def build(
        cls,
        *,
        title: str,
        summary: str,
        sections: list[Section],
        sources: list[Source] | None = None,
        grounded: bool = False,
        searched: bool = False,
        language: str = "en",
    ) -> Report:
        """Assemble the markdown from the parts, so the two never disagree; it ends with the sources list."""
        sources = list(sources or [])
        parts = [f"# {title.strip()}", summary.strip()]
        parts += [f"## {s.heading.strip()}\n\n{s.body.strip()}" for s in sections]
        if sources:
            lines = [f"{s.id}. [{_plain(s.title)}]({s.url}) \u2014 \u201c{_plain(s.quote)}\u201d" for s in sources]
            parts.append(f"## {_SOURCES_HEADING.get(language, 'Sources')}\n\n" + "\n".join(lines))
        else:
            notes = _UNCITED_NOTE if searched else _UNGROUNDED_NOTE
            parts.append(notes.get(language, notes["en"]))
        markdown = "\n\n".join(parts) + "\n"
        return cls(
            title=title, summary=summary, sections=sections, markdown=markdown, sources=sources, grounded=grounded
        )


class Usage(msgspec.Struct, kw_only=True):
    """LLM usage of one run of a task, summed over every call that completed (also of a stopped run)."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    searches: int = 0  # search backend queries made
    pages_read: int = 0  # pages fetched and extracted for sources
    # With prices set (AGENTFARM_LLM_PRICE_*_PER_MTOK): what these tokens cost, in US dollars.
    cost_usd: float | None = None

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together: what a token budget counts."""
        return self.prompt_tokens + self.completion_tokens

    def newer_than(self, other: Usage) -> bool:
        """Whether this snapshot of one run's cumulative usage is later than ``other`` (counters only grow)."""
        mine = (self.llm_calls, self.prompt_tokens + self.completion_tokens, self.searches, self.pages_read)
        theirs = (other.llm_calls, other.prompt_tokens + other.completion_tokens, other.searches, other.pages_read)
        return mine > theirs

    def minus(self, earlier: Usage) -> Usage:
        """What was spent between an earlier snapshot of the same run and this one."""
        return Usage(
            llm_calls=max(0, self.llm_calls - earlier.llm_calls),
            prompt_tokens=max(0, self.prompt_tokens - earlier.prompt_tokens),
            completion_tokens=max(0, self.completion_tokens - earlier.completion_tokens),
            model=self.model,
            cost_usd=_difference(self.cost_usd, earlier.cost_usd),
            searches=max(0, self.searches - earlier.searches),
            pages_read=max(0, self.pages_read - earlier.pages_read),
        )

    def plus(self, other: Usage) -> Usage:
        """This usage and ``other`` together (e.g. every attempt of a task)."""
        return Usage(
            llm_calls=self.llm_calls + other.llm_calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            model=other.model or self.model,
            cost_usd=_sum(self.cost_usd, other.cost_usd),
            searches=self.searches + other.searches,
            pages_read=self.pages_read + other.pages_read,
        )


def _difference(later: float | None, earlier: float | None) -> float | None:
    if later is None:
        return None
    return round(max(0.0, later - (earlier or 0.0)), 9)


def _sum(a: float | None, b: float | None) -> float | None:
    if a is None and b is None:
        return None
    return round((a or 0.0) + (b or 0.0), 9)


def latest(a: Usage, b: Usage) -> Usage:
    """The later of two snapshots of one run's cumulative usage."""
    return b if b.newer_than(a) else a

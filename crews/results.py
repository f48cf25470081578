"""The structured result every crew returns."""

from __future__ import annotations

import msgspec


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """One section of a report: a heading and a markdown body."""

    heading: str
    body: str


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """A finished report: title, summary, sections, and the whole as markdown."""

    title: str
    summary: str
    sections: list[Section]
    markdown: str

    @classmethod
    def build(cls, *, title: str, summary: str, sections: list[Section]) -> Report:
        """Assemble the markdown from the parts, so the two never disagree."""
        parts = [f"# {title.strip()}", summary.strip()]
        parts += [f"## {s.heading.strip()}\n\n{s.body.strip()}" for s in sections]
        return cls(title=title, summary=summary, sections=sections, markdown="\n\n".join(parts) + "\n")


class Usage(msgspec.Struct, kw_only=True):
    """LLM usage of one task, summed over all its calls."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None

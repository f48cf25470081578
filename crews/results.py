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
    """LLM usage of one run of a task, summed over every call that completed (also of a stopped run)."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None

    def newer_than(self, other: Usage) -> bool:
        """Whether this snapshot of one run's cumulative usage is later than ``other`` (counters only grow)."""
        mine = (self.llm_calls, self.prompt_tokens + self.completion_tokens)
        theirs = (other.llm_calls, other.prompt_tokens + other.completion_tokens)
        return mine > theirs

    def minus(self, earlier: Usage) -> Usage:
        """What was spent between an earlier snapshot of the same run and this one."""
        return Usage(
            llm_calls=max(0, self.llm_calls - earlier.llm_calls),
            prompt_tokens=max(0, self.prompt_tokens - earlier.prompt_tokens),
            completion_tokens=max(0, self.completion_tokens - earlier.completion_tokens),
            model=self.model,
        )


def latest(a: Usage, b: Usage) -> Usage:
    """The later of two snapshots of one run's cumulative usage."""
    return b if b.newer_than(a) else a

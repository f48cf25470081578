"""Query planning: one structured LLM call turns the task's subject into search queries in its language."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_MAX_QUERY_CHARS = 200


class QueryPlan(BaseModel):
    """The planning call's structured output."""

    queries: list[str] = Field(description="Web search queries, most useful first, each a few words long.")


def planning_messages(subject: str, kind: str, language_name: str, count: int) -> list[dict[str, str]]:
    return [
        {
            "role": "system",
            "content": ("You plan web searches for a research team. Answer only with the structured output requested."),
        },
        {
            "role": "user",
            "content": (
                f"A {kind.replace('_', ' ')} report is to be written about: {subject}\n"
                f"Write exactly {count} distinct web search queries, in {language_name}, that together find "
                "the facts, figures, recent developments and critical views the report needs. "
                "Each query is a few words, as a person would type it into a search engine."
            ),
        },
    ]


def queries_of(answer: Any, subject: str, count: int) -> list[str]:
    """The planned queries, cleaned and deduplicated, filled up with the subject itself when short."""
    raw: list[str] = []
    if isinstance(answer, QueryPlan):
        raw = answer.queries
    elif isinstance(answer, str):
        try:
            raw = QueryPlan.model_validate_json(answer).queries
        except ValueError:
            raw = []
    queries: list[str] = []
    for query in [*raw, subject]:
        cleaned = " ".join(str(query).split())[:_MAX_QUERY_CHARS]
        if cleaned and cleaned.lower() not in {q.lower() for q in queries}:
            queries.append(cleaned)
    return queries[:count]

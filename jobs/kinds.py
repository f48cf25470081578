"""The job kinds: one row each, and everything else reads this table.

A row says where a kind is submitted (URL path), which queue runs it, which
crew (``crews/<name>/``, with its typed input) it runs, and its default
policy. The submit routes, the OpenAPI document, the CLI, the settings (and
``.env.example``), the docs checks and the tests' parametrisation are all
generated from ``KINDS``: adding a kind is one row here plus one crew folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from crews.investment.crew import CREW as INVESTMENT
from crews.params import Params
from crews.research.crew import CREW as RESEARCH
from crews.spec import CrewSpec
from crews.swot.crew import CREW as SWOT
from crews.technical_review.crew import CREW as TECHNICAL_REVIEW

Queue = Literal["research", "specialized"]
QUEUES: tuple[Queue, ...] = ("research", "specialized")


@dataclass(frozen=True, slots=True)
class Policy:
    """A kind's default limits; each is a setting (``AGENTFARM_<KIND>_<FIELD>``)."""

    rate: str  # submissions per API key, e.g. "10/minute"
    attempts: int
    backoff_s: float  # the first retry's backoff; doubles each attempt
    soft_timeout_s: float
    timeout_s: float
    token_budget: int  # a task's token budget unless it asks for one (max_tokens); 0: none
    max_tokens_limit: int = 0  # the largest max_tokens a task may ask for; 0: the API's own bound (10,000,000)


@dataclass(frozen=True, slots=True)
class Kind:
    """One job kind."""

    name: str
    path: str  # POST /v1/tasks/{path}
    queue: Queue
    crew: CrewSpec[Any]
    policy: Policy
    summary: str  # the submit route's OpenAPI summary and the CLI's help line

    @property
    def params(self) -> type[Params]:
        return self.crew.params


_SPECIALIZED = Policy(
    rate="5/minute", attempts=3, backoff_s=30, soft_timeout_s=480, timeout_s=600, token_budget=300_000
)

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "research",
            "research",
            "research",
            RESEARCH,
            Policy(rate="10/minute", attempts=4, backoff_s=60, soft_timeout_s=780, timeout_s=900, token_budget=600_000),
            "Research a topic with a crew of the chosen type, depth and language",
        ),
        Kind("swot", "swot", "specialized", SWOT, _SPECIALIZED, "A SWOT analysis of a company"),
        Kind(
            "investment",
            "investment",
            "specialized",
            INVESTMENT,
            _SPECIALIZED,
            "A company judged as an investment over a horizon",
        ),
        Kind(
            "technical_review",
            "technical-review",
            "specialized",
            TECHNICAL_REVIEW,
            _SPECIALIZED,
            "A review of a system, design or piece of code, with optional context",
        ),
    )
}


if TYPE_CHECKING:
    KindName = str
else:
    # A Literal built from the table: msgspec validates it and the OpenAPI document lists the kinds.
    KindName = Literal[tuple(KINDS)]


def by_path(path: str) -> Kind | None:
    """The kind submitted at ``/v1/tasks/{path}`` (or named ``path``): both spellings are accepted."""
    return next((k for k in KINDS.values() if path in (k.path, k.name)), None)

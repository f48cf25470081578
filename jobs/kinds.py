"""The four job kinds: their queue, input struct and URL path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crews.params import AnyParams, InvestmentParams, ResearchParams, SwotParams, TechnicalReviewParams
from crews.registry import Kind

Queue = Literal["research", "specialized"]
QUEUES: tuple[Queue, ...] = ("research", "specialized")


@dataclass(frozen=True, slots=True)
class KindSpec:
    name: Kind
    queue: Queue
    params_type: type[AnyParams]
    path: str


KINDS: dict[Kind, KindSpec] = {
    "research": KindSpec("research", "research", ResearchParams, "research"),
    "swot": KindSpec("swot", "specialized", SwotParams, "swot"),
    "investment": KindSpec("investment", "specialized", InvestmentParams, "investment"),
    "technical_review": KindSpec("technical_review", "specialized", TechnicalReviewParams, "technical-review"),
}

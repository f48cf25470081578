"""The research crew: a researcher chosen by crew type, more analysis the deeper it goes, then the writer."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from crews.params import Params
from crews.spec import CrewPlan, CrewSpec

Depth = Literal["basic", "standard", "comprehensive"]
CrewType = Literal["general", "academic", "market"]


class ResearchParams(Params, frozen=True, kw_only=True):
    """Research a topic with a crew of the chosen type and depth."""

    text_fields = ("topic",)

    topic: Annotated[str, msgspec.Meta(min_length=5, max_length=500, description="What to research.")]
    crew_type: Annotated[CrewType, msgspec.Meta(description="Which research crew runs the job.")] = "general"
    depth: Annotated[Depth, msgspec.Meta(description="More depth means more agents, tasks and iterations.")] = (
        "standard"
    )


_RESEARCHER = {"general": "research_topic", "academic": "research_literature", "market": "research_market"}


def plan(params: ResearchParams) -> CrewPlan:
    """Depth changes the crew itself: basic 2 tasks, standard adds an analyst, comprehensive a reviewer."""
    first = _RESEARCHER[params.crew_type]
    if params.depth == "basic":
        return CrewPlan(tasks=(first, "write_research_report"), max_iter=2)
    if params.depth == "standard":
        return CrewPlan(tasks=(first, "analyze_findings", "write_research_report"), max_iter=3)
    return CrewPlan(tasks=(first, "analyze_findings", "review_findings", "write_research_report"), max_iter=4)


CREW = CrewSpec(name="research", params=ResearchParams, plan=plan, subject="topic")

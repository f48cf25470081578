"""The SWOT crew: a strategy analyst gathers and analyses, the writer reports."""

from __future__ import annotations

from crews.params import Company, Params
from crews.spec import CrewPlan, CrewSpec


class SwotParams(Params, frozen=True, kw_only=True):
    """A SWOT analysis of a company."""

    text_fields = ("company",)

    company: Company


def plan(params: SwotParams) -> CrewPlan:
    return CrewPlan(tasks=("swot_research", "swot_analysis", "write_swot_report"), max_iter=3)


CREW = CrewSpec(name="swot", params=SwotParams, plan=plan, subject="company")

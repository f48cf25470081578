"""The investment crew: an investment analyst weighs a company over a horizon, the writer reports."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from crews.params import Company, Params
from crews.spec import CrewPlan, CrewSpec

Horizon = Literal["short", "medium", "long"]


class InvestmentParams(Params, frozen=True, kw_only=True):
    """An investment analysis of a company over a horizon."""

    text_fields = ("company",)

    company: Company
    horizon: Annotated[Horizon, msgspec.Meta(description="Investment horizon.")] = "medium"


def plan(params: InvestmentParams) -> CrewPlan:
    return CrewPlan(tasks=("investment_research", "investment_analysis", "write_investment_report"), max_iter=3)


CREW = CrewSpec(name="investment", params=InvestmentParams, plan=plan, subject="company")

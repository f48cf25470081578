"""The technical review crew: a principal engineer reviews and ranks risks, the writer reports."""

from __future__ import annotations

from typing import Annotated

import msgspec

from crews.params import Params
from crews.spec import CrewPlan, CrewSpec, default_inputs


class TechnicalReviewParams(Params, frozen=True, kw_only=True):
    """A technical review of a subject, with optional context."""

    text_fields = ("subject",)

    subject: Annotated[str, msgspec.Meta(min_length=5, max_length=500, description="What to review.")]
    context: Annotated[
        str, msgspec.Meta(max_length=20_000, description="Optional background for the reviewer (code, design notes).")
    ] = ""


def plan(params: TechnicalReviewParams) -> CrewPlan:
    return CrewPlan(tasks=("technical_review", "technical_risks", "write_technical_report"), max_iter=3)


def inputs(params: TechnicalReviewParams) -> dict[str, str]:
    values = default_inputs(params)
    if not params.context.strip():
        values["context"] = "(no context was provided)"
    return values


CREW = CrewSpec(name="technical_review", params=TechnicalReviewParams, plan=plan, subject="subject", inputs=inputs)

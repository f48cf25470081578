"""Typed inputs of each job kind: what a client sends and what a crew is given."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

Language = Literal["en", "ru"]
Depth = Literal["basic", "standard", "comprehensive"]
Horizon = Literal["short", "medium", "long"]
ResearchCrewType = Literal["general", "academic", "market"]

LANGUAGE_NAMES: dict[str, str] = {"en": "English", "ru": "Russian"}

Topic = Annotated[str, msgspec.Meta(min_length=5, max_length=500, description="What to research.")]
Company = Annotated[str, msgspec.Meta(min_length=2, max_length=200, description="The company to analyse.")]
Subject = Annotated[str, msgspec.Meta(min_length=5, max_length=500, description="What to review.")]
Context = Annotated[
    str, msgspec.Meta(max_length=20_000, description="Optional background for the reviewer (code, design notes).")
]
LanguageField = Annotated[Language, msgspec.Meta(description="Language the report is written in.")]


class Params(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every job kind's input; rejects fields it does not know."""

    language: LanguageField = "en"

    # Required text fields that must hold more than white space.
    text_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.text_fields:
            if not getattr(self, name).strip():
                # msgspec reports this ValueError as a validation error.
                raise ValueError(f"`{name}` must not be blank - at `$.{name}`")


class ResearchParams(Params, frozen=True, kw_only=True):
    """Research a topic with a crew of the chosen type and depth."""

    text_fields = ("topic",)

    topic: Topic
    crew_type: Annotated[ResearchCrewType, msgspec.Meta(description="Which research crew runs the job.")] = "general"
    depth: Annotated[Depth, msgspec.Meta(description="More depth means more agents, tasks and iterations.")] = (
        "standard"
    )


class SwotParams(Params, frozen=True, kw_only=True):
    """A SWOT analysis of a company."""

    text_fields = ("company",)

    company: Company


class InvestmentParams(Params, frozen=True, kw_only=True):
    """An investment analysis of a company over a horizon."""

    text_fields = ("company",)

    company: Company
    horizon: Annotated[Horizon, msgspec.Meta(description="Investment horizon.")] = "medium"


class TechnicalReviewParams(Params, frozen=True, kw_only=True):
    """A technical review of a subject, with optional context."""

    text_fields = ("subject",)

    subject: Subject
    context: Context = ""


AnyParams = ResearchParams | SwotParams | InvestmentParams | TechnicalReviewParams

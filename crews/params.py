"""What every job kind's input shares: the base struct and the common field types.

Each kind's own input struct lives in its crew folder (``crews/<kind>/crew.py``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

Language = Literal["en", "ru"]

LANGUAGE_NAMES: dict[str, str] = {"en": "English", "ru": "Russian"}

Company = Annotated[str, msgspec.Meta(min_length=2, max_length=200, description="The company to analyse.")]
LanguageField = Annotated[Language, msgspec.Meta(description="Language the report is written in.")]


class Params(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every job kind's input; rejects fields it does not know."""

    language: LanguageField = "en"
    # A delivery option, not the crew's input: the finished task is POSTed here, signed (Standard Webhooks).
    webhook_url: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=2048,
                pattern=r"^[hH][tT][tT][pP][sS]?://[^\s/?#]+[^\s]*$",
                description="http(s) URL the finished task is POSTed to, signed with the tenant's webhook secret.",
            ),
        ]
        | None
    ) = None
    # A limit, not the crew's input: the most prompt + completion tokens the task may spend (all attempts).
    max_tokens: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=10_000_000,
                description=(
                    "Token budget of the task (prompt + completion, all attempts). Past it no further LLM call "
                    "is made and the task fails with error type budget_exceeded. Default and upper bound per "
                    "kind: AGENTFARM_<KIND>_TOKEN_BUDGET, AGENTFARM_<KIND>_MAX_TOKENS_LIMIT (at most this bound)."
                ),
            ),
        ]
        | None
    ) = None

    # Required text fields that must hold more than white space.
    text_fields: ClassVar[tuple[str, ...]] = ()
    # How the task is run and delivered, not what the crew works on: never part of the crew's inputs.
    option_fields: ClassVar[tuple[str, ...]] = ("webhook_url", "max_tokens")

    def __post_init__(self) -> None:
        for name in self.text_fields:
            if not getattr(self, name).strip():
                # msgspec reports this ValueError as a validation error.
                raise ValueError(f"`{name}` must not be blank - at `$.{name}`")

"""LLM settings and the offline demo model.

The real model is any crewai model string (``openai/gpt-4o-mini``,
``anthropic/...``, ``ollama/llama3.1``, or an OpenAI-compatible server given a
base URL). With no model configured, the offline demo model writes canned
reports so the whole flow can be seen on a machine without keys; it is named as
such everywhere it shows up.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

DEMO_MODEL = "agentfarm-demo-offline"


class LLMConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How workers reach the LLM."""

    model: str = ""
    base_url: str | None = None
    api_key: str | None = msgspec.field(default=None)
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    max_iter: Annotated[int, msgspec.Meta(ge=1, le=25)] = 5
    # Retries of one call inside the OpenAI-compatible client (5xx, timeouts), before the job's own retries.
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # LLM calls per minute for this model across all workers; 0 means no limit.
    rpm: Annotated[int, msgspec.Meta(ge=0)] = 0

    @property
    def is_demo(self) -> bool:
        return not self.model

    @property
    def model_name(self) -> str:
        """The model as reported in usage and logs."""
        return self.model or DEMO_MODEL

    def __repr__(self) -> str:
        key = "set" if self.api_key else None
        return f"LLMConfig(model={self.model_name!r}, base_url={self.base_url!r}, api_key={key})"

"""LLM settings and the offline demo model.

The real model is any crewai model string (``openai/gpt-4o-mini``,
``anthropic/...``, ``ollama/llama3.1``, or an OpenAI-compatible server given a
base URL). With no model configured, the offline demo model writes canned
reports so the whole flow can be seen on a machine without keys; it is named as
such everywhere it shows up.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from crews.checked import Checked

DEMO_MODEL = "agentfarm-demo-offline"


def _model(raw: str) -> str:
    provider, sep, name = raw.partition("/")
    if not sep or not provider or not name:
        raise ValueError(raw)
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(raw)
    return raw


def _env(parse: object, expected: str, *, secret: bool = False) -> msgspec.Meta:
    # How the settings loader reads the variable (see jobs.settings.env).
    return msgspec.Meta(extra={"parse": parse, "expected": expected, "secret": secret})


class LLMConfig(Checked, frozen=True, kw_only=True):
    """How workers reach the LLM."""

    # A bare name would fall back to LiteLLM, which is not installed: a provider prefix is required.
    model: Annotated[str, _env(_model, "provider/model, e.g. openai/gpt-4o-mini")] = ""
    base_url: Annotated[str | None, _env(_http_url, "an http(s) URL")] = None
    api_key: Annotated[str | None, _env(str, "the provider's key", secret=True)] = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    max_iter: Annotated[int, msgspec.Meta(ge=1, le=25)] = 5
    # Retries of one call inside the OpenAI-compatible client (5xx, timeouts), before the job's own retries.
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # LLM calls per minute for this model across all workers; 0 means no limit.
    rpm: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0

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

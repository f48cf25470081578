"""Sorts a crew's exceptions into transient (worth a retry) and permanent ones.

Only the worker imports this (it reads the OpenAI client's exception types).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import openai
import pydantic

from crews.sources.errors import NoSources, SourceError, SourcesMisconfigured

# Retrying these may well succeed: the provider or the network had a bad moment.
_TRANSIENT: tuple[type[BaseException], ...] = (
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.RateLimitError,
    openai.InternalServerError,
    httpx.TransportError,
    TimeoutError,
    ConnectionError,
    SourceError,  # a search backend failed: it names itself in the message
)
# Failures of our own with an error type of their own (``error_type``), e.g. ``no_sources``.
_TYPED: tuple[type[BaseException], ...] = (SourceError, NoSources, SourcesMisconfigured)

_HINTS: dict[type[BaseException], str] = {
    openai.AuthenticationError: "the LLM provider rejected the API key: check AGENTFARM_LLM_API_KEY",
    openai.PermissionDeniedError: "the API key may not use this model: check AGENTFARM_LLM_MODEL and the key",
    openai.NotFoundError: "the LLM provider does not know this model or URL: check AGENTFARM_LLM_MODEL/BASE_URL",
    openai.BadRequestError: "the LLM provider refused the request as invalid",
    openai.RateLimitError: "the LLM provider is rate limiting (429)",
    openai.InternalServerError: "the LLM provider failed (5xx)",
    openai.APITimeoutError: "the LLM call timed out (AGENTFARM_LLM_TIMEOUT_S)",
    openai.APIConnectionError: "the LLM provider could not be reached",
    pydantic.ValidationError: "the model's final answer did not fit the report schema",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong, whether a retry may help, and how long the provider asked us to wait."""

    transient: bool
    type: str
    message: str
    retry_after_s: float | None = None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def classify(exc: BaseException) -> Failure:
    """The failure ``exc`` stands for; the first recognised exception in its chain decides."""
    chain = _chain(exc)
    decisive = next((e for e in chain if isinstance(e, (*_TYPED, *_TRANSIENT, *_HINTS))), exc)
    hint = next((h for t, h in _HINTS.items() if isinstance(decisive, t)), None)
    detail = str(decisive) or type(decisive).__name__
    message = f"{hint}: {detail}" if hint else detail
    retry_after = None
    if isinstance(decisive, openai.APIStatusError):
        retry_after = _retry_after(decisive.response.headers.get("retry-after"))
    return Failure(
        transient=isinstance(decisive, _TRANSIENT),
        type=str(getattr(decisive, "error_type", "")) or type(decisive).__name__,
        message=message[:2000],
        retry_after_s=retry_after,
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM providers; fall back to our own backoff

"""Sorting crew failures into retry-worthy and final ones."""

from __future__ import annotations

import httpx
import openai
import pytest

from crews.failures import classify

REQUEST = httpx.Request("POST", "http://llm.local/v1/chat/completions")


def status_error(cls: type[openai.APIStatusError], status: int, headers: dict[str, str] | None = None) -> Exception:
    response = httpx.Response(status, request=REQUEST, headers=headers or {})
    return cls(f"Error code: {status}", response=response, body=None)


class TestClassify:
    @pytest.mark.parametrize(
        "exc",
        [
            status_error(openai.InternalServerError, 500),
            status_error(openai.RateLimitError, 429),
            openai.APITimeoutError(request=REQUEST),
            openai.APIConnectionError(request=REQUEST),
            httpx.ConnectError("refused"),
        ],
    )
    def test_provider_hiccups_are_transient(self, exc: Exception) -> None:
        """Timeouts, 429s, 5xx and connection errors are retried."""
        assert classify(exc).transient

    @pytest.mark.parametrize(
        ("exc", "hint"),
        [
            (status_error(openai.AuthenticationError, 401), "AGENTFARM_LLM_API_KEY"),
            (status_error(openai.NotFoundError, 404), "AGENTFARM_LLM_MODEL"),
            (status_error(openai.BadRequestError, 400), "invalid"),
        ],
    )
    def test_configuration_errors_are_permanent_with_a_hint(self, exc: Exception, hint: str) -> None:
        """A rejected key or unknown model fails at once, saying which setting to fix."""
        failure = classify(exc)
        assert not failure.transient
        assert hint in failure.message

    def test_the_cause_decides_when_crewai_wraps_it(self) -> None:
        """An error crewai raised *from* a provider error is classified by that provider error."""
        try:
            try:
                raise status_error(openai.InternalServerError, 503)
            except openai.InternalServerError as inner:
                raise RuntimeError("agent execution failed") from inner
        except RuntimeError as outer:
            failure = classify(outer)
        assert failure.transient and failure.type == "InternalServerError"

    def test_retry_after_is_read(self) -> None:
        """A 429's Retry-After (seconds) is carried to the retry policy."""
        failure = classify(status_error(openai.RateLimitError, 429, {"Retry-After": "7"}))
        assert failure.retry_after_s == 7.0

    def test_unknown_errors_are_permanent(self) -> None:
        """An error nobody recognised is not retried blindly (it would spend tokens again)."""
        assert not classify(ValueError("boom")).transient

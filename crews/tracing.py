"""Spans for a crew's run: the crew, each agent task, each LLM call (OpenTelemetry GenAI conventions).

Only the OpenTelemetry API is used here; the process decides where spans go.
crewai calls our hooks synchronously in the crew's thread before and after
every LLM call, so spans open and close in order. A call that raises never
reaches the "after" hook; its span is closed as failed when the next call (a
retry) starts or when the run ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crewai.llms.base_llm import BaseLLM
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

tracer = trace.get_tracer("agentfarm.crews")


@dataclass
class CrewTracer:
    """The open spans of one crew run."""

    llm: BaseLLM
    model: str
    provider: str
    crew_context: otel_context.Context = field(default_factory=otel_context.get_current)
    task_index: int | None = None
    task_span: Span | None = None
    call_span: Span | None = None
    calls: int = 0
    _prompt_before: int = 0
    _completion_before: int = 0

    def task_started(self, index: int, role: str, task_name: str) -> None:
        if index == self.task_index:
            return
        self.task_ended()
        self.task_index = index
        self.task_span = tracer.start_span(
            f"invoke_agent {role}",
            context=self.crew_context,
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": role,
                "crewai.task.name": task_name,
                "crewai.task.index": index,
            },
        )

    def task_ended(self) -> None:
        self._close_call(failed=True)
        if self.task_span is not None:
            self.task_span.end()
            self.task_span = None

    def call_started(self, iteration: int) -> None:
        retried = self._close_call(failed=True)
        parent = trace.set_span_in_context(self.task_span) if self.task_span is not None else self.crew_context
        usage = self.llm.get_token_usage_summary()
        self._prompt_before, self._completion_before = usage.prompt_tokens, usage.completion_tokens
        self.calls += 1
        self.call_span = tracer.start_span(
            f"chat {self.model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": self.model,
                "crewai.iteration": iteration,
                "agentfarm.llm.after_failed_call": retried,
            },
        )

    def call_ended(self) -> None:
        span = self.call_span
        if span is None:
            return
        usage = self.llm.get_token_usage_summary()
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens - self._prompt_before)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens - self._completion_before)
        span.end()
        self.call_span = None

    def finished(self, error: BaseException | None) -> None:
        """End whatever is still open when the run ends; a call still open there is what failed."""
        if self.call_span is not None and error is not None:
            self.call_span.record_exception(error)
            self._close_call(failed=True, error_type=type(error).__name__)
        self._close_call(failed=error is not None)
        self.task_ended()

    def _close_call(self, *, failed: bool, error_type: str = "call_failed") -> bool:
        """End the open call span, as failed if it never got its "after" hook; whether one was open."""
        span = self.call_span
        if span is None:
            return False
        if failed:
            span.set_status(Status(StatusCode.ERROR, "the LLM call did not return"))
            span.set_attribute("error.type", error_type)
        span.end()
        self.call_span = None
        return True

"""Run one job's crew: build it fresh, report progress, return the report and usage.

With ``crews.executor``, ``crews.tracing`` and ``crews.demo_llm``, one of the four
modules that import crewai (``crews/__init__.py`` sets crewai's environment before any of them
loads it); only worker processes import them. It runs in a worker thread, so
everything it reports goes through the ``RunObserver`` the caller passes in.
Usage is reported as calls complete (from the job's own LLM instance), so a
run that is stopped or abandoned still accounts for every call it made.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from crewai import Agent, Crew, Process, Task
from crewai.crews.crew_output import CrewOutput
from crewai.hooks import register_after_llm_call_hook, register_before_llm_call_hook
from crewai.hooks.llm_hooks import LLMCallHookContext
from crewai.llms.base_llm import BaseLLM
from crewai.tasks.task_output import TaskOutput
from pydantic import BaseModel, Field

from crews.control import stop_points
from crews.demo_llm import DemoLLM
from crews.executor import LeanAgentExecutor
from crews.llm import LLMConfig
from crews.llm import build_llm as configured_llm
from crews.params import Params
from crews.results import Report, Usage
from crews.sources import run as sources_stage
from crews.sources.config import SourcesConfig
from crews.spec import CrewSpec
from crews.tracing import CrewTracer, tracer

# Progress spent before the first LLM call, and the part spread over the tasks.
_START_PROGRESS = 5
_TASKS_SHARE = 90


class RunObserver(Protocol):
    """What the caller learns while a crew runs (called from the crew's thread)."""

    def before_llm_call(self) -> None:
        """Called before every LLM call; raises ``CrewStopped`` to stop the crew, may wait (rate limits)."""

    def stop_point(self) -> None:
        """Raises ``CrewStopped`` if the run was asked to stop; what ``crews.control.stop_point()`` calls."""

    def on_progress(self, progress: int, stage: str) -> None: ...

    def on_usage(self, usage: Usage) -> None:
        """The run's cumulative usage so far: after every completed call, before each call and at the end."""

    def on_source(self, url: str, title: str) -> None:
        """A page was read for the report (the sources stage)."""


class CrewOutputError(Exception):
    """The model's final answer did not fit the report schema."""


class SectionDraft(BaseModel):
    heading: str = Field(description="A short, informative section heading.")
    body: str = Field(description="The section text, in markdown.")


class ReportDraft(BaseModel):
    """The final task's structured output."""

    title: str = Field(description="A precise title for the report.")
    summary: str = Field(description="Three to five sentences summarising the report.")
    sections: list[SectionDraft] = Field(description="The report's sections, in reading order.")


@dataclass
class _Tracker:
    """Maps crewai's callbacks of one run to progress; lives in a ContextVar."""

    observer: RunObserver
    tasks: list[Task]
    max_iter: int
    spans: CrewTracer
    usage: Callable[[], Usage]
    roles: dict[int, str] = field(default_factory=dict)

    def before_llm_call(self, task: Any, iterations: int) -> None:
        # Calls that skip the after-hook (tool-call answers) are counted here, before the stop point.
        self.observer.on_usage(self.usage())
        self.observer.before_llm_call()
        index = next((i for i, t in enumerate(self.tasks) if t is task), None)
        if index is not None:
            role = self.roles.get(index, "agent")
            self.spans.task_started(index, role, self.tasks[index].name or "")
            within = min(iterations, self.max_iter) / (self.max_iter + 1)
            self.observer.on_progress(self._progress(index + within), f"{role}: {self.tasks[index].name}")
        self.spans.call_started(iterations)

    def after_llm_call(self) -> None:
        self.spans.call_ended()
        self.observer.on_usage(self.usage())

    def task_done(self, output: TaskOutput) -> None:
        # No progress write of its own: the next task's first call reports the same progress a moment
        # later (tasks run one after another), and the last task's end is the task's final write.
        if any(t.name == output.name for t in self.tasks):
            self.spans.task_ended()

    def _progress(self, tasks_done: float) -> int:
        return _START_PROGRESS + int(_TASKS_SHARE * tasks_done / len(self.tasks))


_current: ContextVar[_Tracker | None] = ContextVar("agentfarm_crew_run", default=None)


def _before_llm_call(context: LLMCallHookContext) -> None:
    """One hook for the whole process; each crew finds its own run in the context."""
    tracker = _current.get()
    if tracker is not None:
        tracker.before_llm_call(context.task, context.iterations)


def _after_llm_call(context: LLMCallHookContext) -> None:
    tracker = _current.get()
    if tracker is not None:
        tracker.after_llm_call()


def _task_done(output: TaskOutput) -> None:
    """Task callback (a plain function: crewai cannot checkpoint bound methods)."""
    tracker = _current.get()
    if tracker is not None:
        tracker.task_done(output)


register_before_llm_call_hook(_before_llm_call)
register_after_llm_call_hook(_after_llm_call)


def build_llm(config: LLMConfig, crew: CrewSpec[Any], params: Params) -> BaseLLM:
    """A fresh LLM per job (crewai's usage counters are per instance), on the process's shared HTTP clients."""
    if config.is_demo:
        return DemoLLM(subject=crew.subject_of(params), language=params.language)
    return configured_llm(config)


def run_crew(
    crew_spec: CrewSpec[Any],
    params: Params,
    config: LLMConfig,
    observer: RunObserver,
    sources: SourcesConfig | None = None,
) -> Report:
    """Gather the job's sources, build its crew, run it to the end and return its gated report.

    With a search backend set, the sources stage (``crews.sources.run``) plans
    queries, searches and reads pages first; the writers get the numbered
    excerpts as ``{sources}``, and the citation gate checks the report against
    the pages read before it is returned.

    Usage is handed to ``observer.on_usage`` as calls complete and once more at
    the end, whether the run succeeds or not: tokens spent on a failed, stopped
    or abandoned run are still spent.
    """
    kind = crew_spec.name
    prompts = crew_spec.prompts()
    plan = crew_spec.plan(params)
    llm = build_llm(config, crew_spec, params)
    prepared = sources_stage.prepare(
        crew_spec, params, llm, observer, sources or SourcesConfig(), lambda: usage_of(llm, config)
    )
    max_iter = min(plan.max_iter, config.max_iter)
    agents: dict[str, Agent] = {}
    tasks: list[Task] = []
    provider = "agentfarm" if config.is_demo else config.model.partition("/")[0]
    for index, key in enumerate(plan.tasks):
        prompt = prompts.tasks[key]
        if prompt.agent not in agents:
            agent_prompt = prompts.agents[prompt.agent]
            agents[prompt.agent] = Agent(
                role=agent_prompt.role,
                goal=agent_prompt.goal,
                backstory=agent_prompt.backstory,
                llm=llm,
                max_iter=max_iter,
                allow_delegation=False,
                verbose=False,
                executor_class=LeanAgentExecutor,
            )
        last = index == len(plan.tasks) - 1
        tasks.append(
            Task(
                name=key,
                description=prompt.description,
                expected_output=prompt.expected_output,
                agent=agents[prompt.agent],
                output_pydantic=ReportDraft if last else None,
                callback=_task_done,
            )
        )
    crew = Crew(agents=list(agents.values()), tasks=tasks, process=Process.sequential, verbose=False)
    attributes: dict[str, str | int] = {
        "agentfarm.kind": kind,
        "gen_ai.request.model": config.model_name,
        "crewai.tasks": len(tasks),
    }
    with tracer.start_as_current_span(f"crew {kind}", attributes=attributes):
        tracker = _Tracker(
            observer=observer,
            tasks=tasks,
            max_iter=max_iter,
            spans=CrewTracer(llm=llm, model=config.model_name, provider=provider),
            usage=lambda: prepared.usage(usage_of(llm, config)),
            roles={i: prompts.agents[prompts.tasks[key].agent].role for i, key in enumerate(plan.tasks)},
        )
        token = _current.set(tracker)
        error: BaseException | None = None
        try:
            with stop_points(observer.stop_point):
                output = crew.kickoff(inputs={**crew_spec.inputs(params), **prepared.inputs})
        except BaseException as exc:
            error = exc
            raise
        finally:
            _current.reset(token)
            tracker.spans.finished(error)
            observer.on_usage(prepared.usage(usage_of(llm, config)))
    draft = output.pydantic if isinstance(output, CrewOutput) else None
    if not isinstance(draft, ReportDraft):
        raise CrewOutputError("the model's final answer did not match the report schema")
    sections = [(s.heading, s.body) for s in draft.sections]
    return sources_stage.finish(kind, params.language, draft.title, draft.summary, sections, prepared)


def usage_of(llm: BaseLLM, config: LLMConfig) -> Usage:
    summary = llm.get_token_usage_summary()
    return Usage(
        llm_calls=summary.successful_requests,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        model=config.model_name,
        cost_usd=config.cost_usd(summary.prompt_tokens, summary.completion_tokens),
    )

"""Which agents and tasks each job kind runs, and the inputs its prompts get.

The prompts live in ``config/agents.yaml`` and ``config/tasks.yaml``; this
module only composes them. Depth changes the crew's structure (more tasks and
agents, more iterations per agent), not just a label.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import msgspec
import yaml

from crews.params import LANGUAGE_NAMES, AnyParams, Params, ResearchParams, TechnicalReviewParams

Kind = Literal["research", "swot", "investment", "technical_review"]


class AgentPrompt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An agent's role, goal and backstory, with placeholders."""

    role: str
    goal: str
    backstory: str


class TaskPrompt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A task's description and expected output, and the agent that does it."""

    agent: str
    description: str
    expected_output: str


@dataclass(frozen=True, slots=True)
class CrewPlan:
    """The tasks a crew runs, in order, and how many iterations each agent gets.

    The last task writes the structured report.
    """

    tasks: tuple[str, ...]
    max_iter: int


@dataclass(frozen=True, slots=True)
class Prompts:
    agents: dict[str, AgentPrompt]
    tasks: dict[str, TaskPrompt]

    def placeholders(self, plan: CrewPlan) -> set[str]:
        """Every ``{name}`` the plan's tasks and their agents use."""
        texts: list[str] = []
        for key in plan.tasks:
            task = self.tasks[key]
            agent = self.agents[task.agent]
            texts += [task.description, task.expected_output, agent.role, agent.goal, agent.backstory]
        return {field for text in texts for _, field, _, _ in string.Formatter().parse(text) if field}


@functools.cache
def load_prompts() -> Prompts:
    """Read and validate the YAML prompts shipped with the package (once per process)."""
    folder = resources.files("crews") / "config"
    agents = msgspec.convert(yaml.safe_load((folder / "agents.yaml").read_text("utf-8")), dict[str, AgentPrompt])
    tasks = msgspec.convert(yaml.safe_load((folder / "tasks.yaml").read_text("utf-8")), dict[str, TaskPrompt])
    for key, task in tasks.items():
        if task.agent not in agents:
            raise ValueError(f"tasks.yaml: task {key!r} names unknown agent {task.agent!r}")
    return Prompts(agents=agents, tasks=tasks)


_RESEARCHER_TASK = {"general": "research_topic", "academic": "research_literature", "market": "research_market"}

_FIXED_PLANS: dict[str, CrewPlan] = {
    "swot": CrewPlan(tasks=("swot_research", "swot_analysis", "write_swot_report"), max_iter=3),
    "investment": CrewPlan(tasks=("investment_research", "investment_analysis", "write_investment_report"), max_iter=3),
    "technical_review": CrewPlan(tasks=("technical_review", "technical_risks", "write_technical_report"), max_iter=3),
}


def plan_for(kind: Kind, params: AnyParams) -> CrewPlan:
    """The crew for a job: research crews vary by crew type and depth."""
    if kind != "research":
        return _FIXED_PLANS[kind]
    assert isinstance(params, ResearchParams)
    first = _RESEARCHER_TASK[params.crew_type]
    if params.depth == "basic":
        return CrewPlan(tasks=(first, "write_research_report"), max_iter=2)
    if params.depth == "standard":
        return CrewPlan(tasks=(first, "analyze_findings", "write_research_report"), max_iter=3)
    return CrewPlan(tasks=(first, "analyze_findings", "review_findings", "write_research_report"), max_iter=4)


def crew_inputs(params: Params) -> dict[str, str]:
    """The values a crew's prompt placeholders are filled with."""
    inputs: dict[str, Any] = msgspec.structs.asdict(params)
    if isinstance(params, TechnicalReviewParams) and not params.context.strip():
        inputs["context"] = "(no context was provided)"
    inputs["language_name"] = LANGUAGE_NAMES[params.language]
    return {name: str(value) for name, value in inputs.items()}


def subject_of(params: Params) -> str:
    """A short human label of what the job is about (for logs and the demo model)."""
    for name in ("topic", "company", "subject"):
        value = getattr(params, name, None)
        if isinstance(value, str):
            return value
    raise TypeError(f"{type(params).__name__} has no subject field")

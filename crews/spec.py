"""What a crew folder declares, and how its prompts are loaded.

A crew is a folder, ``crews/<name>/``: ``config/agents.yaml`` and
``config/tasks.yaml`` hold every prompt (with ``{placeholders}`` filled from the
job's input), and ``crew.py`` holds the typed input of the job kind and the
plan — which tasks run, in order, and how many iterations each agent gets.
The shared runner (``crews.runner``) turns a plan into a crewai crew; nothing
here imports crewai, so the API can validate inputs without loading it.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

import msgspec
import yaml

from crews.params import LANGUAGE_NAMES, Params

P = TypeVar("P", bound=Params)


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
    """The tasks a crew runs, in order, and how many iterations each agent gets; the last writes the report."""

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


# What the writers are told when no search backend is configured (``{sources}`` in the prompts).
NO_SOURCES = (
    "(No sources: no web search was made for this task. Write from your own knowledge, say so plainly in the "
    "summary, and cite nothing: no [n] citations and no URLs.)"
)


def default_inputs(params: Params) -> dict[str, str]:
    """The job's input fields as text, and the report language spelled out."""
    inputs: dict[str, Any] = {
        name: value for name, value in msgspec.structs.asdict(params).items() if name not in params.option_fields
    }
    inputs["language_name"] = LANGUAGE_NAMES[params.language]
    inputs["sources"] = NO_SOURCES  # the runner puts the numbered excerpts here when a search backend is set
    return {name: str(value) for name, value in inputs.items()}


@dataclass(frozen=True, slots=True)
class CrewSpec(Generic[P]):
    """One crew: its folder, the job input it takes, and how that input shapes the crew."""

    name: str  # the folder under crews/
    params: type[P]
    plan: Callable[[P], CrewPlan]
    subject: str  # the input field that says what the job is about (logs, the demo model)
    inputs: Callable[[P], dict[str, str]] = default_inputs

    def prompts(self) -> Prompts:
        return load_prompts(self.name)

    def subject_of(self, params: Params) -> str:
        return str(getattr(params, self.subject))


@functools.cache
def load_prompts(crew: str) -> Prompts:
    """Read and validate a crew folder's YAML prompts (once per process)."""
    folder = resources.files(f"crews.{crew}") / "config"
    agents = msgspec.convert(yaml.safe_load((folder / "agents.yaml").read_text("utf-8")), dict[str, AgentPrompt])
    tasks = msgspec.convert(yaml.safe_load((folder / "tasks.yaml").read_text("utf-8")), dict[str, TaskPrompt])
    for key, task in tasks.items():
        if task.agent not in agents:
            raise ValueError(f"crews/{crew}/config/tasks.yaml: task {key!r} names unknown agent {task.agent!r}")
    return Prompts(agents=agents, tasks=tasks)

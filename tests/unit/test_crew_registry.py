"""The crews: one folder each, whose YAML prompts, placeholders and plans fit the job's input."""

from __future__ import annotations

import itertools
import typing
from importlib import resources
from typing import Any

import msgspec
import pytest

from crews.params import Language, Params
from crews.research.crew import CrewType, Depth, ResearchParams
from crews.swot.crew import SwotParams
from crews.technical_review.crew import TechnicalReviewParams
from jobs.kinds import KINDS, Kind

# Fields that shape the crew instead of appearing in its prompts.
# Choices that shape the plan, and delivery options that never reach the crew.
STRUCTURAL = {"crew_type", "depth", "language", *Params.option_fields}

SAMPLE_TEXT = {"topic": "a topic", "company": "Acme", "subject": "the parser", "context": "code"}


def sample(kind: Kind, **overrides: Any) -> Params:
    """A valid input of ``kind``, built from its own struct's required fields."""
    info = msgspec.inspect.type_info(kind.params)
    assert isinstance(info, msgspec.inspect.StructType)
    # A new kind's required text field gets a made-up value: no list here to extend for it.
    values = {f.name: SAMPLE_TEXT.get(f.name, f"a {f.name.replace('_', ' ')}") for f in info.fields if f.required}
    return kind.params(**values, **overrides)


def every_params() -> list[tuple[Kind, Params]]:
    """Every kind's sample input, and every research crew type x depth x language."""
    research = KINDS["research"]
    variants = [
        (research, ResearchParams(topic="a topic", crew_type=c, depth=d, language=lang))
        for c, d, lang in itertools.product(
            typing.get_args(CrewType), typing.get_args(Depth), typing.get_args(Language)
        )
    ]
    empty_context = (KINDS["technical_review"], TechnicalReviewParams(subject="the parser"))
    return [*((k, sample(k)) for k in KINDS.values()), *variants, empty_context]


def ids(case: tuple[Kind, Params]) -> str:
    return f"{case[0].name}:{msgspec.json.encode(case[1]).decode()}"


class TestCrewFolders:
    @pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.name)
    def test_every_kind_has_a_crew_folder_with_its_prompts(self, kind: Kind) -> None:
        """Each row of the kinds table names a crew folder holding config/agents.yaml and config/tasks.yaml."""
        folder = resources.files(f"crews.{kind.crew.name}")
        assert (folder / "crew.py").is_file()
        assert (folder / "config" / "agents.yaml").is_file() and (folder / "config" / "tasks.yaml").is_file()

    @pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.name)
    def test_every_yaml_task_is_used_and_names_a_known_agent(self, kind: Kind) -> None:
        """A crew's tasks.yaml holds no dead prompts and its agents.yaml no unused agents."""
        prompts = kind.crew.prompts()
        used_tasks = {t for k, params in every_params() if k is kind for t in kind.crew.plan(params).tasks}

        assert set(prompts.tasks) == used_tasks
        assert {prompts.tasks[t].agent for t in used_tasks} == set(prompts.agents)


class TestPlaceholders:
    @pytest.mark.parametrize("case", every_params(), ids=ids)
    def test_every_placeholder_has_an_input(self, case: tuple[Kind, Params]) -> None:
        """Every {placeholder} in a crew's prompts is filled from the job's input struct."""
        kind, params = case
        missing = kind.crew.prompts().placeholders(kind.crew.plan(params)) - set(kind.crew.inputs(params))
        assert not missing, f"{kind.name}: prompts use {missing} but the input has no such field"

    @pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.name)
    def test_every_input_field_reaches_the_prompts(self, kind: Kind) -> None:
        """Each descriptive field of a kind's input is used by its prompts (none silently ignored)."""
        params = sample(kind)
        used = kind.crew.prompts().placeholders(kind.crew.plan(params))

        fields = set(msgspec.structs.asdict(params)) - STRUCTURAL
        assert fields <= used, f"{kind.name}: {fields - used} never reach the crew"
        assert "language_name" in used

    def test_empty_context_is_said_to_be_empty(self) -> None:
        """A technical review without context tells the crew so, instead of an empty gap in the prompt."""
        crew = KINDS["technical_review"].crew
        assert crew.inputs(TechnicalReviewParams(subject="the parser"))["context"] == "(no context was provided)"


class TestPlans:
    def test_depth_adds_agents_tasks_and_iterations(self) -> None:
        """Deeper research runs more tasks, more distinct agents and more iterations."""
        crew = KINDS["research"].crew
        prompts = crew.prompts()
        plans = [crew.plan(ResearchParams(topic="a topic", depth=d)) for d in ("basic", "standard", "comprehensive")]

        assert [len(p.tasks) for p in plans] == [2, 3, 4]
        assert [len({prompts.tasks[t].agent for t in p.tasks}) for p in plans] == [2, 3, 4]
        assert plans[0].max_iter < plans[1].max_iter < plans[2].max_iter

    @pytest.mark.parametrize("case", every_params(), ids=ids)
    def test_every_crew_ends_with_its_report_writer(self, case: tuple[Kind, Params]) -> None:
        """The last task of every crew is the one that writes the structured report."""
        kind, params = case
        last = kind.crew.plan(params).tasks[-1]
        assert kind.crew.prompts().tasks[last].agent == "report_writer"

    def test_crew_type_changes_the_first_task(self) -> None:
        """Each research crew type starts with a different researcher."""
        crew = KINDS["research"].crew
        firsts = {crew.plan(ResearchParams(topic="a topic", crew_type=c)).tasks[0] for c in typing.get_args(CrewType)}
        assert len(firsts) == len(typing.get_args(CrewType))

    def test_language_name_is_spelled_out(self) -> None:
        """Prompts get the language's name, not its code."""
        assert KINDS["swot"].crew.inputs(SwotParams(company="Acme", language="ru"))["language_name"] == "Russian"

"""The crew registry: YAML prompts, their placeholders and the crews each kind runs."""

from __future__ import annotations

import itertools
import typing

import msgspec
import pytest

from crews.params import (
    AnyParams,
    Depth,
    InvestmentParams,
    Language,
    ResearchCrewType,
    ResearchParams,
    SwotParams,
    TechnicalReviewParams,
)
from crews.registry import Kind, crew_inputs, load_prompts, plan_for
from jobs.kinds import KINDS

# Fields that shape the crew instead of appearing in its prompts.
STRUCTURAL = {"crew_type", "depth", "language"}


def every_params() -> list[tuple[Kind, AnyParams]]:
    research = [
        ResearchParams(topic="a topic", crew_type=c, depth=d, language=lang)
        for c, d, lang in itertools.product(
            typing.get_args(ResearchCrewType), typing.get_args(Depth), typing.get_args(Language)
        )
    ]
    return [
        *[("research", p) for p in research],
        ("swot", SwotParams(company="Acme")),
        ("investment", InvestmentParams(company="Acme", horizon="short")),
        ("technical_review", TechnicalReviewParams(subject="the parser", context="code")),
        ("technical_review", TechnicalReviewParams(subject="the parser")),
    ]


class TestPlaceholders:
    @pytest.mark.parametrize(("kind", "params"), every_params())
    def test_every_placeholder_has_an_input(self, kind: Kind, params: AnyParams) -> None:
        """Every {placeholder} in a crew's prompts is filled from the job's input struct."""
        plan = plan_for(kind, params)

        missing = load_prompts().placeholders(plan) - set(crew_inputs(params))
        assert not missing, f"{kind}: prompts use {missing} but the input has no such field"

    @pytest.mark.parametrize("kind", list(KINDS))
    def test_every_input_field_reaches_the_prompts(self, kind: Kind) -> None:
        """Each descriptive field of a kind's input is used by its prompts (none silently ignored)."""
        params = next(p for k, p in every_params() if k == kind)
        used = load_prompts().placeholders(plan_for(kind, params))

        fields = set(msgspec.structs.asdict(params)) - STRUCTURAL
        assert fields <= used, f"{kind}: {fields - used} never reach the crew"
        assert "language_name" in used

    def test_every_yaml_task_is_used_and_names_a_known_agent(self) -> None:
        """tasks.yaml holds no dead prompts and agents.yaml no unused agents."""
        prompts = load_prompts()
        used_tasks = {t for kind, params in every_params() for t in plan_for(kind, params).tasks}

        assert set(prompts.tasks) == used_tasks
        assert {prompts.tasks[t].agent for t in used_tasks} == set(prompts.agents)


class TestPlans:
    def test_depth_adds_agents_tasks_and_iterations(self) -> None:
        """Deeper research runs more tasks, more distinct agents and more iterations."""
        prompts = load_prompts()
        plans = [
            plan_for("research", ResearchParams(topic="a topic", depth=d))
            for d in ("basic", "standard", "comprehensive")
        ]

        assert [len(p.tasks) for p in plans] == [2, 3, 4]
        assert [len({prompts.tasks[t].agent for t in p.tasks}) for p in plans] == [2, 3, 4]
        assert plans[0].max_iter < plans[1].max_iter < plans[2].max_iter

    @pytest.mark.parametrize(("kind", "params"), every_params())
    def test_every_crew_ends_with_its_report_writer(self, kind: Kind, params: AnyParams) -> None:
        """The last task of every crew is the one that writes the structured report."""
        last = plan_for(kind, params).tasks[-1]
        assert last.startswith("write_") and last.endswith("_report")

    def test_crew_type_changes_the_first_task(self) -> None:
        """Each research crew type starts with a different researcher."""
        firsts = {
            plan_for("research", ResearchParams(topic="a topic", crew_type=c)).tasks[0]
            for c in ("general", "academic", "market")
        }
        assert len(firsts) == 3

    def test_language_name_is_spelled_out(self) -> None:
        """Prompts get the language's name, not its code."""
        assert crew_inputs(SwotParams(company="Acme", language="ru"))["language_name"] == "Russian"

"""What crews/executor.py relies on in crewai: fails loudly when a crewai upgrade changes it.

``LeanAgentExecutor`` overrides two private pieces of crewai's ``AgentExecutor``
(``_create_initial_state`` and the body of ``Flow.kickoff``), runs flow steps
inline where crewai hands them to ``asyncio.to_thread``, and a serving worker
unregisters crewai's own event-bus listeners. If a check here
fails after an upgrade, read the new crewai, then change ``crews/executor.py``
(and only it) before changing this test.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from importlib.metadata import version
from typing import Any

from crewai import Agent
from crewai.agents.agent_executor import AgentExecutor, AgentExecutorState
from crewai.events.event_bus import crewai_event_bus
from crewai.flow.flow import Flow, FlowState

from crews.demo_llm import DemoLLM
from crews.executor import ExecutorState, InlineExecutor, LeanAgentExecutor, crewai_listeners_off, thread_loop
from crews.llm import LLMConfig
from crews.research.crew import CREW as RESEARCH
from crews.research.crew import ResearchParams
from crews.results import Usage
from crews.runner import run_crew


class _Quiet:
    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.call_threads: set[int] = set()

    def before_llm_call(self) -> None:
        self.call_threads.add(threading.get_ident())

    def stop_point(self) -> None: ...
    def on_progress(self, progress: int, stage: str) -> None: ...
    def on_source(self, url: str, title: str) -> None: ...

    def on_usage(self, usage: Usage) -> None:
        self.usage = usage


def _run_basic() -> tuple[str, Usage | None]:
    observer = _Quiet()
    params = ResearchParams(topic="Executor contract check", depth="basic")
    report = run_crew(RESEARCH, params, LLMConfig(), observer)
    return report.title, observer.usage


class TestWhatTheOverridesReplace:
    def test_the_pinned_version(self) -> None:
        # pyproject pins crewai exactly: an upgrade is a decision that re-runs this file.
        assert version("crewai") == "1.15.30"

    def test_crewai_still_builds_a_state_class_per_executor(self) -> None:
        """The cached class stands in for ``StateWithId(FlowState, <state type>)`` built in the override's place."""
        source = inspect.getsource(Flow._create_initial_state)
        assert "class StateWithId(FlowState, state_type)" in source
        assert AgentExecutor._initial_state_t is AgentExecutorState  # type: ignore[attr-defined]
        assert set(ExecutorState.model_fields) == set(FlowState.model_fields) | set(AgentExecutorState.model_fields)

    def test_kickoff_is_asyncio_run_of_kickoff_async_in_a_runtime_scope(self) -> None:
        """The override runs the same coroutine on this thread's loop, inside the same event-bus scope."""
        source = inspect.getsource(Flow.kickoff)
        for step in ("apply_checkpoint(", "self.stream", "_enter_runtime_scope()", "asyncio.run(_run_flow())"):
            assert step in source, step
        assert "_exit_runtime_scope(runtime_scope)" in source
        assert list(inspect.signature(Flow.kickoff).parameters) == list(
            inspect.signature(LeanAgentExecutor.kickoff).parameters
        )
        assert list(inspect.signature(Flow.kickoff_async).parameters)[:3] == ["self", "inputs", "input_files"]

    def test_sync_flow_steps_go_through_the_loops_default_executor(self) -> None:
        """``asyncio.to_thread`` (the loop's default executor) is where ``InlineExecutor`` takes the steps over."""
        source = inspect.getsource(Flow._execute_method)
        assert "await asyncio.to_thread(ctx.run, method, *args, **kwargs)" in source

    def test_the_bus_scopes_handlers_and_crewai_registers_its_listeners_on_it(self) -> None:
        """``crewai_listeners_off`` relies on ``scoped_handlers`` unregistering what is there and restoring it."""
        assert sum(len(h) for h in crewai_event_bus._sync_handlers.values()) > 0  # crewai's EventListener
        assert "self.off(event_type, sync_handler)" in inspect.getsource(type(crewai_event_bus).scoped_handlers)

    def test_agents_take_the_executor_class(self) -> None:
        agent = Agent(
            role="r", goal="g", backstory="b", executor_class=LeanAgentExecutor, llm=DemoLLM(subject="s", language="en")
        )
        assert agent.executor_class is LeanAgentExecutor

    def test_the_subclass_runs_exactly_crewais_steps(self) -> None:
        """crewai reads a flow's steps from the class's own ``__dict__``: the subclass carries crewai's definition."""
        assert LeanAgentExecutor.flow_definition() is AgentExecutor.flow_definition()
        assert "call_llm_and_parse" in AgentExecutor.flow_definition().methods
        assert "_flow_definition" in LeanAgentExecutor.__dict__


class TestTheLeanExecutor:
    def test_each_executor_gets_the_shared_state_class_and_its_own_id(self) -> None:
        states: list[Any] = []
        for _ in range(2):
            executor = LeanAgentExecutor.__new__(LeanAgentExecutor)
            object.__setattr__(executor, "initial_state", None)
            states.append(LeanAgentExecutor._create_initial_state(executor))
        assert all(type(s) is ExecutorState for s in states)
        assert states[0].id and states[1].id and states[0].id != states[1].id
        assert states[0].model_dump(exclude={"id"}) == ExecutorState().model_dump(exclude={"id"})

    def test_crews_in_one_thread_share_its_loop_and_leave_nothing_pending(self) -> None:
        first = _run_basic()
        loop = thread_loop()
        second = _run_basic()
        assert thread_loop() is loop and not loop.is_closed()
        assert asyncio.all_tasks(loop) == set()
        assert first == second  # same report and the exact same usage: no state carried between runs
        assert first[1] is not None and first[1].llm_calls == 2

    def test_each_crew_thread_has_its_own_loop(self) -> None:
        loops: list[asyncio.AbstractEventLoop] = []
        thread = threading.Thread(target=lambda: (_run_basic(), loops.append(thread_loop())))
        thread.start()
        thread.join(timeout=60)
        assert loops and loops[0] is not thread_loop()


class TestInlineStepsAndQuietBus:
    def test_a_crews_llm_calls_run_on_its_own_thread(self) -> None:
        """Flow steps run inline: every LLM call of a crew happens on the thread that runs the crew."""
        observer = _Quiet()
        params = ResearchParams(topic="Inline steps", depth="basic")
        thread = threading.Thread(target=lambda: run_crew(RESEARCH, params, LLMConfig(), observer))
        thread.start()
        thread.join(timeout=60)
        assert observer.call_threads == {thread.ident}
        assert observer.usage is not None and observer.usage.llm_calls == 2

    def test_an_inline_step_hands_back_its_result_and_its_exception(self) -> None:
        """What a step returns or raises (``CrewStopped`` is a ``BaseException``) reaches the awaiting flow."""

        class Stop(BaseException):
            pass

        def fail() -> None:
            raise Stop

        executor = InlineExecutor()
        assert executor.submit(lambda a, b: a + b, 2, b=3).result() == 5
        raised = executor.submit(fail).exception()
        assert isinstance(raised, Stop)

    def test_listeners_are_off_while_serving_and_back_after(self) -> None:
        """Inside ``crewai_listeners_off`` the bus has no handler, so an emit hands nothing to its pool."""

        def count() -> int:
            return sum(len(h) for h in crewai_event_bus._sync_handlers.values())

        before = count()
        with crewai_listeners_off():
            assert count() == 0
            title, usage = _run_basic()
            assert title and usage is not None and usage.llm_calls == 2
            assert count() == 0  # running a crew does not register them again
        assert count() == before

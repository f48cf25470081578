"""crewai's ``AgentExecutor`` with its per-task start-up and per-step costs taken out.

crewai runs every agent task as a small Flow, and two things in starting one
dominated the worker's CPU per job (py-spy over a B3 drain, docs/benchmarks.md):

- ``Flow._create_initial_state`` builds a new pydantic class
  ``StateWithId(FlowState, AgentExecutorState)`` for every executor: class
  creation, schema generation and validator set-up, ≈ 13 ms per job. The class
  never differs, so it is built once here.
- ``Flow.kickoff`` runs ``asyncio.run`` per agent task: a new event loop,
  selector, self-pipe and default thread pool each time, shut down again at the
  end. Here each crew thread keeps one loop for its life.
- Every synchronous flow step goes through ``asyncio.to_thread``: a hop to a
  pool thread and back, several per LLM call. On the crew thread's own loop the
  step runs inline (``InlineExecutor``).
- crewai's own event-bus listeners (its console output, off with
  ``verbose=False``, and its telemetry, off by environment) still cost a thread
  pool hand-off per event: ``crewai_listeners_off`` unregisters them while a
  worker serves, through the bus's own ``scoped_handlers``.

Both are overrides of crewai internals (``_create_initial_state``, the body of
``kickoff``), fenced by ``tests/unit/test_crewai_contract.py``: if an upgrade
changes what they replace, that test fails before any job does. Anything this
class does not cover (checkpoints, restored state, streaming, a caller already
inside an event loop) goes to crewai's own code unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ClassVar

from crewai.agents.agent_executor import AgentExecutor, AgentExecutorState
from crewai.events.event_bus import crewai_event_bus
from crewai.flow.flow import FlowState
from crewai.flow.flow_definition import FlowDefinition
from crewai.utilities.agent_utils import is_inside_event_loop


class ExecutorState(FlowState, AgentExecutorState):
    """The class crewai would build per executor, built once (each instance gets its own ``id``)."""


_threads = threading.local()


class InlineExecutor(ThreadPoolExecutor):
    """A crew thread loop's default executor: runs what it is given at once, in the calling thread.

    crewai runs every synchronous flow step through ``asyncio.to_thread``: a hop to
    another thread and back for each step, several per LLM call. On a loop that
    belongs to one crew thread, and that has nothing else to do while a step runs,
    the hop buys nothing; the step runs here instead (its exceptions, ``CrewStopped``
    included, reach the awaiting flow unchanged).
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting flow, as a pool thread would
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's own event loop for crewai's flows, created on first use."""
    loop: asyncio.AbstractEventLoop | None = getattr(_threads, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        loop.set_default_executor(InlineExecutor())
        _threads.loop = loop
    return loop


class LeanAgentExecutor(AgentExecutor):
    """``Agent(executor_class=LeanAgentExecutor)``: same behaviour, cheaper start."""

    # crewai reads a flow's steps from its class's own ``__dict__``, so a subclass would have none:
    # it runs exactly crewai's steps, by their definition.
    _flow_definition: ClassVar[FlowDefinition | None] = AgentExecutor.flow_definition()

    def _create_initial_state(self) -> Any:
        if self.initial_state is not None or self._create_default_extension_state() is not None:
            return super()._create_initial_state()
        return ExecutorState()

    def kickoff(
        self,
        inputs: dict[str, Any] | None = None,
        input_files: Any = None,
        from_checkpoint: Any = None,
        restore_from_state_id: str | None = None,
    ) -> Any:
        if from_checkpoint is not None or restore_from_state_id is not None or self.stream or is_inside_event_loop():
            return super().kickoff(inputs, input_files, from_checkpoint, restore_from_state_id)
        outermost = crewai_event_bus._enter_runtime_scope()
        loop = thread_loop()
        try:
            return loop.run_until_complete(self.kickoff_async(inputs, input_files))
        finally:
            _cancel_leftovers(loop)
            crewai_event_bus._exit_runtime_scope(outermost)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does at the end: no task of one run is left to wake up in the next."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


@contextmanager
def crewai_listeners_off() -> Iterator[None]:
    """While this runs, crewai's own event-bus listeners are unregistered (and restored after).

    They draw crewai's console output (we run crews with ``verbose=False``, so
    they draw nothing) and send crewai's telemetry (turned off in
    ``crews/__init__.py``), yet each event still cost a hand-off to the bus's
    thread pool: ≈ 15 % of a crew's CPU. Nothing of ours listens on the bus
    (progress, usage and spans come from crewai's LLM-call hooks), so a worker
    serves inside this.
    """
    with crewai_event_bus.scoped_handlers():
        yield

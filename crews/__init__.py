"""Crew definitions: one folder per crew (prompts in YAML, typed input and plan), and the shared runner.

``crews.runner``, ``crews.executor``, ``crews.tracing`` and ``crews.demo_llm``
import crewai; only worker processes import them, so the API (which needs the
input structs and the crews' plans) never pays crewai's import time or memory.

crewai reads its environment when it is imported: it is set here, once, so
that no import order can let crewai start with telemetry on (it calls home),
its tracing on (also its first-run trace collection), its version check on,
or its storage somewhere unwritable.

crewai also guards its local stores (the task-output SQLite file every crew
writes, flow persistence, file handlers) with a lock that is, by default, a
file lock in the temp folder shared by every process on the host (or a Redis
lock when ``REDIS_URL`` is set), and a waiter polls it every 0.25 s: two crews
side by side spent a third of their wall time in that sleep (measured, py-spy).
Those stores are local to this process (SQLite does its own locking between
processes), so where crewai is installed its lock becomes a lock of this
process, through crewai's own ``set_lock_backend``.
"""

import importlib.util
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"
os.environ["CREWAI_DISABLE_VERSION_CHECK"] = "true"
os.environ.setdefault("CREWAI_STORAGE_DIR", str(Path(tempfile.gettempdir()) / "agentfarm-crewai"))

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def process_lock(name: str, *, timeout: float = 120) -> Iterator[None]:
    """crewai's named lock as a lock of this process (the contract of ``crewai_core.lock_store.lock``)."""
    with _locks_guard:
        lock = _locks.setdefault(name, threading.Lock())
    if not lock.acquire(timeout=timeout):
        raise TimeoutError(f"crewai lock {name!r} not acquired in {timeout} s")
    try:
        yield
    finally:
        lock.release()


if importlib.util.find_spec("crewai_core") is not None:  # the worker extra (the API image has no crewai)
    from crewai_core import lock_store, user_data

    lock_store.set_lock_backend(process_lock)
    # CREWAI_TRACING_ENABLED=false does not stop crewai's "first execution" trace collection: unless its
    # user file says the first run is done and tracing declined, importing crewai registers ~90 trace
    # handlers on its event bus (183 instead of 91, measured), run on every event. So it is recorded here,
    # before any crewai import, as `crewai traces disable` would.
    try:
        if not user_data.has_user_declined_tracing():
            user_data.update_user_data({"first_execution_done": True, "trace_consent": False})
    except OSError:  # an unwritable storage folder: crewai then runs with the handlers, which is only slower
        pass

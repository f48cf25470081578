"""``agentfarm`` commands as real processes forked from one pre-imported template.

A worker process spends about 5 s of CPU importing crewai before it serves anything, and the
suite starts dozens of them. multiprocessing's fork server imports the CLI and the worker once
per test process; every ``CliProcess`` is then a fork of it: its own pid, memory, Redis
connections and signal handlers, killed and stopped by signals like any other process, running
the same ``service.cli.main`` the ``agentfarm`` script runs. What it skips is the interpreter
start and the imports. Tests of the command line itself (``--processes``, ``agentfarm dev``)
still start ``python -m service.cli``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
# Imported by the fork server once, so forked children start with them loaded; the test process
# itself does not import them for this.
_CONTEXT.set_forkserver_preload(
    ["service.cli", "service.app", "hypercorn.asyncio", "jobs.worker", "tests.support.forked"]
)


def _run(argv: list[str], env: dict[str, str], log_path: str, cwd: str) -> None:
    """The child: output to the log file, the given environment and folder, then the command."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # What importing crews set (CREWAI_*, before any crewai import) stays, as in a fresh process.
    imported = {k: v for k, v in os.environ.items() if k.startswith("CREWAI_")}
    os.environ.clear()
    os.environ.update({**imported, **env})
    os.chdir(cwd)
    from service.cli import main  # noqa: PLC0415 - already imported by the fork server

    try:
        code = main(argv)
    finally:
        atexit._run_exitfuncs()  # a fork ends with os._exit: run what a normal interpreter exit runs
    sys.exit(code)


class CliProcess:
    """One ``agentfarm <argv>`` process, with the part of ``subprocess.Popen``'s interface tests use.

    Daemonic: one a test left running is terminated when the test process exits.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self._process = _CONTEXT.Process(target=_run, args=(list(argv), env, str(log_path), str(cwd)), daemon=True)
        self._process.start()

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        """The exit code (negative: the signal that killed it), or None while it runs."""
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; TimeoutError if it is still running after ``timeout`` seconds."""
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise TimeoutError(f"process {self.pid} still running after {timeout} s")
        return code

"""The `agentfarm` client commands, run through the CLI's own entry point against a real API and worker."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.kinds import KINDS
from service.client import kind_fields
from tests.conftest import ROOT, ApiProcess, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import RedisServer, free_port

CLI_KEY = "cli-test-key-0003"
AGENTFARM = [sys.executable, "-m", "service.cli"]


def cli_env(url: str = "http://127.0.0.1:9", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
    env.update(AGENTFARM_URL=url, AGENTFARM_API_KEY=CLI_KEY, NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def agentfarm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTFARM, *args], cwd=ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=90, check=False
    )


@pytest.fixture(scope="module")
def api_url(
    redis_server: RedisServer, llm_server: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`agentfarm serve` as a process of its own, with a tenant of its own so listings hold only this module's tasks."""
    env = service_env(redis_server.url, llm_server, AGENTFARM_API_KEYS=f"cli:{CLI_KEY}")
    api = ApiProcess(env, tmp_path_factory.mktemp("api") / "api.log")
    yield api.url
    api.stop()


@pytest.fixture
def slow_llm(llm_server: ScriptedLLM) -> Iterator[ScriptedLLM]:
    llm_server.reset()
    llm_server.default_delay_s = 0.5
    yield llm_server
    llm_server.reset()


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


class TestWithoutAServer:
    def test_version(self) -> None:
        """`--version` prints the package's version."""
        done = agentfarm("--version")
        assert done.returncode == 0 and re.fullmatch(r"agentfarm \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout

    def test_help_is_plain_text(self) -> None:
        """`--help` shows plain text with its own line breaks, no reStructuredText markup."""
        done = agentfarm("--help")
        assert done.returncode == 0
        assert "``" not in done.stdout
        assert "\nexamples:\n  agentfarm dev" in done.stdout

    def test_submit_help_lists_every_kind_and_field(self) -> None:
        """`submit --help` names each kind of the kinds table with each of its fields and their values."""
        text = agentfarm("submit", "--help").stdout
        for kind in KINDS:
            section = text[text.index(f"  {kind}") :]
            for field in kind_fields(kind):
                assert re.search(rf"\n    {field.encode_name}\s", section), (kind, field.encode_name)
        assert "depth      basic | comprehensive | standard; default standard" in text
        assert "technical_review (or technical-review)" in text

    def test_list_limit_outside_1_to_100_is_refused(self) -> None:
        """`list --limit 0` (or 101) is refused with a message, as the API would."""
        for limit in ("0", "101"):
            done = agentfarm("list", "--limit", limit)
            assert done.returncode == 2
            assert f"--limit: must be from 1 to 100, got {limit}" in done.stderr

    def test_refused_connection_is_one_line(self) -> None:
        """No API at AGENTFARM_URL: one line saying so, exit code 1, no traceback."""
        url = f"http://127.0.0.1:{free_port()}"
        for args in (["list"], ["show", "some-id"], ["watch", "some-id"], ["submit", "swot", "company=Acme"]):
            done = agentfarm(*args, env=cli_env(url))
            assert done.returncode == 1, done
            assert f"cannot connect to the API at {url}" in one_error_line(done)

    def test_unknown_field_is_refused_before_sending(self) -> None:
        """A misspelled field name is refused with the kind's field names."""
        done = agentfarm("submit", "research", "topc=batteries")
        assert done.returncode == 2
        fields = "crew_type, depth, language, max_tokens, topic, webhook_url"
        assert f"research has no field 'topc'; its fields: {fields}" in one_error_line(done)

    def test_client_commands_do_not_import_crewai(self) -> None:
        """The CLI's client path loads neither crewai nor the server's telemetry."""
        code = (
            "import sys; from service.cli import main; main(['list']); "
            "print('crewai' in sys.modules, 'opentelemetry.sdk' in sys.modules, file=sys.stderr)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False
        )
        assert done.stderr.strip().endswith("False False"), done.stderr


@pytest.mark.slow
class TestAgainstTheApi:
    def test_submit_watch_show_list_cancel_with_json(self, api_url: str, worker: Any) -> None:
        """submit --watch completes; submit/show/list/cancel --json print the API's JSON."""
        env = cli_env(api_url)
        done = agentfarm("submit", "research", "topic=solid-state batteries", "depth=basic", "--watch", env=env)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.splitlines()[0]
        assert "100%" in done.stdout and "completed" in done.stdout

        shown = json.loads(agentfarm("show", task_id, "--json", env=env).stdout)
        assert shown["id"] == task_id and shown["status"] == "completed"
        assert shown["params"]["depth"] == "basic"
        listed = json.loads(agentfarm("list", "--limit", "1", "--json", env=env).stdout)
        assert [t["id"] for t in listed["items"]] == [task_id]
        plain = agentfarm("show", task_id, env=env).stdout
        assert "status:   completed" in plain and f"agentfarm report {task_id}" in plain
        assert agentfarm("report", task_id, env=env).stdout.startswith("# ")

        submitted = json.loads(agentfarm("submit", "swot", "company=Acme Robotics", "--json", env=env).stdout)
        assert submitted["kind"] == "swot" and submitted["status"] == "queued"
        cancelled = agentfarm("cancel", submitted["id"], "--json", env=env)
        if cancelled.returncode == 0:  # the worker may finish it first: then the API's 409, in one line
            assert json.loads(cancelled.stdout)["status"] == "cancelled"
        else:
            assert cancelled.returncode == 1 and "409 Conflict" in one_error_line(cancelled)

    def test_technical_review_spelled_like_the_url_is_accepted(self, api_url: str) -> None:
        """`technical-review` (the URL's spelling) and `technical_review` both submit a technical review."""
        for spelling in ("technical-review", "technical_review"):
            done = agentfarm("submit", spelling, "subject=the retry logic", "--json", env=cli_env(api_url))
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["kind"] == "technical_review"
        listed = agentfarm("list", "--kind", "technical-review", "--json", env=cli_env(api_url))
        assert listed.returncode == 0 and json.loads(listed.stdout)["items"]

    def test_api_errors_print_their_detail_and_fields_in_one_line(self, api_url: str) -> None:
        """A 400 names the field and why, a 404 says not found, a 401 points at the key; exit code 1."""
        done = agentfarm("submit", "research", "topic=abc", env=cli_env(api_url))
        assert done.returncode == 1
        assert re.match(r"agentfarm: 400 .*topic: Expected `str` of length >= 5", one_error_line(done))
        missing = agentfarm("show", "no-such-task", env=cli_env(api_url))
        assert missing.returncode == 1 and "404 Not Found" in one_error_line(missing)
        wrong_key = agentfarm("list", env=cli_env(api_url, AGENTFARM_API_KEY="not-a-key"))
        assert wrong_key.returncode == 1 and "AGENTFARM_API_KEY" in one_error_line(wrong_key)

    def test_ctrl_c_in_watch_is_one_line_and_exit_code_130(self, api_url: str, worker: Any, slow_llm: Any) -> None:
        """SIGINT while watching prints one line (the task goes on) and exits 130, no traceback."""
        env = cli_env(api_url)
        # A terminal's agentfarm gets ctrl-c; a suite started in the background inherits SIGINT ignored
        # (POSIX shells do that to background jobs), so the child restores what a terminal gives it.
        interactive = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " + (
            "from service.cli import main; sys.exit(main())"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", interactive, "submit", "research", "topic=tidal energy in Norway", "--watch"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        task_id = process.stdout.readline().strip()
        assert process.stdout.readline(), "a progress line is printed"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"agentfarm watch {task_id}" in err

    def test_progress_bar_fits_a_terminal_narrower_than_100_columns(
        self, api_url: str, worker: Any, slow_llm: Any
    ) -> None:
        """On a 60-column terminal every drawn line fits in 60 columns, and the bar reaches 100%."""
        output = run_in_terminal([*AGENTFARM, "submit", "swot", "company=Acme Robotics", "--watch"], cli_env(api_url))
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
        pieces = [p for p in re.split(r"[\r\n]", text) if p.strip()]
        assert pieces and max(len(p) for p in pieces) <= 60, [p for p in pieces if len(p) > 60]
        assert "100%" in text and "completed" in text


def run_in_terminal(command: list[str], env: dict[str, str], columns: int = 60) -> str:
    """Run a command on a pseudo-terminal of the given width; everything it drew."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command exited
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(leader)
    assert process.returncode == 0, b"".join(chunks)
    return b"".join(chunks).decode(errors="replace")

"""`agentfarm dev` (what `make run` starts): Redis, API and worker from one command, offline demo model."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from tests.conftest import ROOT, SCRIPTED_MODEL
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import free_port

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_", "MAKELEVEL"))}
    env.update(NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1", **extra)
    return env


def start_dev(cwd: Path, api_port: int, redis_port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """`agentfarm dev` in its own process group, the way a terminal runs a foreground job."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "dev", "--port", str(api_port), "--redis-port", str(redis_port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_banner(process: subprocess.Popen[str], timeout_s: float = 120) -> list[str]:
    """Every line up to the end of the banner ("Ctrl-C here stops everything")."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if "stops everything" in line:
            return lines
    raise AssertionError("no banner printed:\n" + "".join(lines))


def banner_value(lines: list[str], label: str) -> str:
    match = next(m for line in lines if (m := re.match(rf"\s+{label}\s+(\S+)", line)))
    return match.group(1)


def ctrl_c(process: subprocess.Popen[str]) -> str:
    """SIGINT to the process group (what the terminal's Ctrl-C does); the output printed afterwards."""
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    return output


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_dev_once(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.cli", "dev", *args]
    return subprocess.run(
        command, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


class RunningDev:
    """One `agentfarm dev` started from nothing in an empty folder, and its banner."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.api_port, self.redis_port = free_port(), free_port()
        self.process = start_dev(folder, self.api_port, self.redis_port, clean_env())
        self.lines = read_banner(self.process)


@pytest.fixture(scope="class")
def running_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDev]:
    """Shared by the tests that only use a running `agentfarm dev`; stopping it is tested on its own below."""
    dev = RunningDev(tmp_path_factory.mktemp("dev"))
    yield dev
    ctrl_c(dev.process)


class TestDevCommand:
    def test_dev_runs_a_task_to_a_readable_report(self, running_dev: RunningDev) -> None:
        """From nothing, `agentfarm dev` prints a working key and a task completes on the demo model."""
        lines = running_dev.lines
        key = banner_value(lines, "API key")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{running_dev.api_port}", headers=headers, timeout=10) as client:
            created = client.post("/v1/tasks/research", json={"topic": "solid-state batteries", "language": "ru"})
            assert created.status_code == 202, created.text
            task_id = created.json()["id"]
            deadline = time.monotonic() + 60
            while (task := client.get(f"/v1/tasks/{task_id}").json())["status"] not in {"completed", "failed"}:
                assert time.monotonic() < deadline, task
                time.sleep(0.2)
            assert task["status"] == "completed", task["error"]
            assert task["usage"]["model"] == "agentfarm-demo-offline"
            assert task["usage"]["llm_calls"] == 3
            report = client.get(f"/v1/tasks/{task_id}/report")
            assert report.status_code == 200
            assert report.text.startswith("# solid-state batteries")
            assert re.search("[а-яА-Я]{5,}", report.text), "a ru report is written in Russian"
        assert (running_dev.folder / ".run" / "dev-api-key").read_text().strip() == key
        assert "agentfarm-demo-offline" in "".join(lines)

    def test_banner_comes_once_everything_is_ready_and_its_commands_work_as_printed(
        self, running_dev: RunningDev
    ) -> None:
        """The banner follows the worker's start; its export, submit, dlq and curl lines work pasted into a shell."""
        lines = running_dev.lines
        text = "".join(lines)
        assert text.index("worker_started") < text.index("API key"), "the banner comes after the worker is up"
        assert text.count("API key") == 1
        export = next(line.strip() for line in lines if line.strip().startswith("export "))
        assert f"AGENTFARM_REDIS_URL=redis://127.0.0.1:{running_dev.redis_port}/0" in export
        commands = [line.strip() for line in lines if re.search(r"(agentfarm|service\.cli) (submit|dlq)", line)]
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        shell_env = clean_env(PATH="/usr/bin:/bin")  # no venv on PATH: the lines must not rely on it
        for command in [*commands, curl]:
            done = subprocess.run(
                ["bash", "-c", f"{export}; {command} && echo OK"],
                cwd=running_dev.folder,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert done.returncode == 0 and "OK" in done.stdout, (command, done.stdout, done.stderr)
        assert "[]" in done.stdout, "the operator key opens the dead-letter endpoint"

    def test_second_copy_in_the_same_folder_is_one_line(self, running_dev: RunningDev) -> None:
        """While one `agentfarm dev` runs, a second one in its folder says so in one line, whatever its ports."""
        second = run_dev_once(running_dev.folder, "--port", str(free_port()), "--redis-port", str(free_port()))
        assert second.returncode == 1
        assert second.stdout == "" and len(second.stderr.splitlines()) == 1, second.stderr
        assert "already running in this folder" in second.stderr
        assert running_dev.process.poll() is None, "the first copy runs on"

    def test_ctrl_c_stops_api_and_worker_once_then_redis_and_says_little(
        self, tmp_path: Path, llm_server: ScriptedLLM
    ) -> None:
        """Ctrl-C on the group: the worker gets one SIGTERM and finishes its task while Redis is up; no traceback."""
        llm_server.reset()
        llm_server.default_delay_s = 0.7
        api_port, redis_port = free_port(), free_port()
        env = clean_env(
            AGENTFARM_LLM_MODEL=SCRIPTED_MODEL,
            AGENTFARM_LLM_BASE_URL=llm_server.base_url,
            AGENTFARM_LLM_API_KEY="scripted-key",
            AGENTFARM_WORKER_METRICS_PORT="0",
            AGENTFARM_LOG_FORMAT="json",
        )
        process = start_dev(tmp_path, api_port, redis_port, env)
        try:
            key = banner_value(read_banner(process), "API key")
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=10) as client:
                task_id = client.post("/v1/tasks/swot", json={"company": "Acme Robotics"}).json()["id"]
                deadline = time.monotonic() + 30
                while client.get(f"/v1/tasks/{task_id}").json()["status"] != "running":
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            output = ctrl_c(process)
            llm_server.reset()
        assert process.returncode == 0, output
        assert "Traceback" not in output, output
        stopping = [line for line in output.splitlines() if "worker_stopping" in line]
        assert len(stopping) == 1 and "SIGTERM" in stopping[0], output
        own = [line for line in output.splitlines() if not line.startswith("{")]
        assert len([line for line in own if line.strip()]) <= 2, own
        assert not port_open(api_port) and not port_open(redis_port)
        # Redis outlived the worker: the task's completion is in its data.
        redis_dir = tmp_path / ".run" / "redis"
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--dir", str(redis_dir), "--appendonly", "yes"],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = Redis(port=redis_port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    stored = client.get(f"agentfarm:task:{task_id}")
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert stored is not None and b'"status":"completed"' in stored, stored
            client.close()
        finally:
            redis.terminate()
            redis.wait(timeout=10)

    def test_busy_api_port_is_one_line_saying_how_to_choose_another(self, tmp_path: Path, listening: int) -> None:
        """A busy API port: one line naming it and the option (or make variable) that picks another."""
        done = run_dev_once(tmp_path, "--port", str(listening), "--redis-port", str(free_port()))
        assert done.returncode == 1
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"port {listening} (the API)" in done.stderr and "agentfarm dev --port " in done.stderr
        made = run_dev_once(
            tmp_path, "--port", str(listening), env=clean_env(MAKELEVEL="1")
        )  # under make, the hint is the make variable
        assert "make run PORT=" in made.stderr, made.stderr

    def test_busy_redis_port_is_one_line(self, tmp_path: Path, listening: int) -> None:
        """A busy dev Redis port: one line naming it, --redis-port and AGENTFARM_REDIS_URL."""
        done = run_dev_once(tmp_path, "--port", str(free_port()), "--redis-port", str(listening))
        assert done.returncode == 1
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert f"port {listening} (dev Redis)" in done.stderr and "--redis-port" in done.stderr
        assert "AGENTFARM_REDIS_URL" in done.stderr

    def test_missing_redis_server_is_one_line_with_the_command(self, tmp_path: Path) -> None:
        """No redis-server and no apt-get: one line with what to install, no traceback."""
        empty = tmp_path / "bin"
        empty.mkdir()
        done = run_dev_once(
            tmp_path, "--port", str(free_port()), "--redis-port", str(free_port()), env=clean_env(PATH=str(empty))
        )
        assert done.returncode == 1
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "redis-server is not installed" in done.stderr

    @pytest.mark.skipif(os.geteuid() != 0, reason="installs only as root")
    def test_missing_redis_server_is_installed_with_apt_get_as_root(self, tmp_path: Path) -> None:
        """As root with apt-get, a missing redis-server is installed with `apt-get install -y redis-server`."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        calls = tmp_path / "apt-calls"
        fake_apt = bin_dir / "apt-get"
        fake_apt.write_text(
            f'#!/bin/sh\necho "$@" >> {calls}\n'
            f"printf '#!/bin/sh\\necho fake redis-server refuses to start\\nexit 1\\n' > {bin_dir}/redis-server\n"
            f"/bin/chmod +x {bin_dir}/redis-server\n"
        )
        fake_apt.chmod(0o755)
        done = run_dev_once(
            tmp_path,
            "--port",
            str(free_port()),
            "--redis-port",
            str(free_port()),
            env=clean_env(PATH=str(bin_dir)),
        )
        assert "installing it: apt-get install -y redis-server" in done.stdout, done.stdout
        assert calls.read_text().split() == ["install", "-y", "-q", "redis-server"]
        assert done.returncode == 1 and "Redis did not start" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr

    def test_printed_command_is_the_running_executable_relative_to_the_folder(self) -> None:
        """Run from the project, the banner's command is `.venv/bin/agentfarm`-style: a path that works as typed."""
        code = "from service.dev import agentfarm_command; print(agentfarm_command())"
        env = clean_env(PATH="/usr/bin:/bin")
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        command = done.stdout.strip()
        expected = Path(sys.executable).parent / "agentfarm"
        assert (ROOT / command).absolute() == expected.absolute() or Path(command) == expected, command
        assert not Path(command).is_absolute() or not expected.is_relative_to(ROOT)

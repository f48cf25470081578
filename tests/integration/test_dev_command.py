"""`agentfarm dev` (what `make run` starts): Redis, API and worker from one command, offline demo model."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import free_port

pytestmark = pytest.mark.slow


def wait_for_key(process: subprocess.Popen[str], timeout_s: float = 90) -> tuple[str, list[str]]:
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
        match = re.search(r"API key:\s+(\S+)", line)
        if match:
            return match.group(1), lines
    raise AssertionError("no API key printed:\n" + "".join(lines))


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class TestDevCommand:
    def test_dev_runs_a_task_to_a_readable_report_and_stops_cleanly(self, tmp_path: Path) -> None:
        """From nothing, `agentfarm dev` prints a working key; a task completes on the demo model; Ctrl-C stops all."""
        api_port, redis_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "dev", "--port", str(api_port), "--redis-port", str(redis_port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            key, _ = wait_for_key(process)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=10) as client:
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
            assert (tmp_path / ".run" / "dev-api-key").read_text().strip() == key
        finally:
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert not port_open(api_port) and not port_open(redis_port)
        assert "agentfarm-demo-offline" in output

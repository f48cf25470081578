"""`agentfarm serve --workers N` and `agentfarm worker --processes N`: several real processes, one command."""

from __future__ import annotations

import os
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

from tests.conftest import ROOT, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

AGENTFARM = [sys.executable, "-m", "service.cli"]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established_on(port: int) -> set[str]:
    """Inodes of the server side of established TCP connections on a local port (IPv4)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED
            inodes.add(fields[9])
    return inodes


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


def test_serve_with_two_workers_answers_from_two_processes_and_stops_on_sigterm(
    redis: RedisServer, llm_server: ScriptedLLM, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(redis.url, llm_server)
    log = (tmp_path / "api.log").open("wb")
    parent = subprocess.Popen(
        [*AGENTFARM, "serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    connections: list[socket.socket] = []
    try:
        _wait_for(lambda: len(_children(parent.pid)) == 2, 30, "two API processes")
        children = _children(parent.pid)

        def both_listen() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(both_listen, 60, "the API did not answer")
        time.sleep(1)  # the second process may still be starting: both must have joined the port
        # Twenty connections, each answered: the kernel spreads them over the processes (SO_REUSEPORT).
        for _ in range(20):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            connections.append(conn)
        established = _established_on(port)
        served = {pid: len(_socket_inodes(pid) & established) for pid in children}
        assert sum(served.values()) == 20, served
        assert all(count > 0 for count in served.values()), f"one process answered everything: {served}"
    finally:
        for conn in connections:
            conn.close()
        code = _stop(parent)
        log.close()
    assert code == 0, (tmp_path / "api.log").read_text()[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_serve_with_workers_on_a_busy_port_is_one_line(redis: RedisServer, llm_server: ScriptedLLM) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*AGENTFARM, "serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=service_env(redis.url, llm_server),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr
    assert "Traceback" not in done.stderr


def _worker_pids(redis_url: str) -> set[int]:
    client = Redis.from_url(redis_url)
    try:
        members = [m.decode() for k in client.keys("agentfarm:workers:*") for m in client.zrange(k, 0, -1)]
    finally:
        client.close()
    return {int(m.split(":")[1]) for m in members}


def _start_workers(redis: RedisServer, llm: ScriptedLLM, log_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    env = service_env(redis.url, llm)
    log = log_path.open("wb")
    parent = subprocess.Popen(
        [*AGENTFARM, "worker", "--queue", "research", "--processes", "2"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    _wait_for(lambda: len(_worker_pids(redis.url)) == 2, 90, "two workers did not beat")
    return parent, _children(parent.pid)


def test_worker_with_two_processes_runs_two_workers_and_both_stop_on_sigterm(
    redis: RedisServer, llm_server: ScriptedLLM, tmp_path: Path
) -> None:
    parent, children = _start_workers(redis, llm_server, tmp_path / "worker.log")
    try:
        assert len(children) == 2
        assert _worker_pids(redis.url) == set(children)  # each child is a worker; the parent only supervises
    finally:
        code = _stop(parent)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert log.count('"worker_stopped"') == 2, log[-3000:]  # each stopped gracefully, once
    assert _worker_pids(redis.url) == set()  # and said so (heartbeats removed)


def test_a_worker_process_that_dies_stops_the_others_and_the_exit_code_says_so(
    redis: RedisServer, llm_server: ScriptedLLM, tmp_path: Path
) -> None:
    parent, children = _start_workers(redis, llm_server, tmp_path / "worker.log")
    try:
        os.kill(children[0], signal.SIGKILL)
        code = parent.wait(timeout=30)
    finally:
        if parent.poll() is None:
            _stop(parent)
    assert code == 128 + signal.SIGKILL
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)

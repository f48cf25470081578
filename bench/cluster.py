"""The processes a benchmark runs: its own redis-server, the stub LLM, ``agentfarm serve`` and ``agentfarm worker``.

Everything is a real process on a free loopback port, started through the
``agentfarm`` command line (never by importing the service's internals), in a
scratch folder so that no ``.env`` of the checkout is read. What the benchmarks
read back comes from the HTTP API, the worker's ``/metrics``, ``/proc`` and
Redis's ``INFO``.
"""

# ruff: noqa: S603

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

API_KEY = "bench-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def agentfarm() -> list[str]:
    """The ``agentfarm`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "agentfarm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def _redis_commands(raw: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^cmdstat_([\w|]+):calls=(\d+)", raw, re.M)}


class Redis:
    """``redis-server`` on a free port, with the AOF setting of ``agentfarm dev`` (``appendonly yes``) or without."""

    def __init__(self, workdir: Path, *, aof: bool) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench: redis-server is missing: apt-get install -y redis-server")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        # As `agentfarm dev` (appendonly yes, appendfsync everysec, noeviction); RDB snapshots off in both
        # modes, so the difference measured is the AOF alone.
        command += ["--appendonly", "yes" if aof else "no", "--maxmemory-policy", "noeviction", "--save", ""]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.call("PING") != "PONG":
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: redis-server did not start on port {self.port}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def call(self, *args: str) -> str:
        """One command over a fresh connection (RESP by hand: the bench adds no client of its own)."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(request.encode())
                data = b""
                while True:
                    chunk = sock.recv(65536)
                    data += chunk
                    if not chunk or _complete(data):
                        break
        except OSError:
            return ""
        head, _, rest = data.partition(b"\r\n")
        if head.startswith(b"$"):
            return rest[: int(head[1:])].decode()
        return head[1:].decode()

    def info(self, section: str) -> str:
        return self.call("INFO", section)

    def commands(self) -> dict[str, int]:
        return _redis_commands(self.info("commandstats"))

    def stat(self, name: str) -> int:
        found = re.search(rf"^{name}:(\d+)", self.info("stats"), re.M)
        return int(found[1]) if found else 0

    def version(self) -> str:
        found = re.search(r"^redis_version:(\S+)", self.info("server"), re.M)
        return found[1] if found else "?"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n")
    if not sep:
        return False
    if head.startswith(b"$") and int(head[1:]) >= 0:
        return len(rest) >= int(head[1:]) + 2
    return True


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"bench: {self.name} exited ({self.process.returncode}):\n{self.log_text()[-3000:]}")

    def stop(self, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def service_env(redis_url: str, llm_url: str, **extra: str) -> dict[str, str]:
    """What every service process of a benchmark gets: this Redis, the stub LLM, no rate limits in the way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
    env.update(
        AGENTFARM_REDIS_URL=redis_url,
        AGENTFARM_API_KEYS=f"bench:{API_KEY}",
        AGENTFARM_LLM_MODEL="openai/bench-model",
        AGENTFARM_LLM_BASE_URL=llm_url,
        AGENTFARM_LLM_API_KEY="bench-llm-key",
        AGENTFARM_LLM_TIMEOUT_S="30",
        AGENTFARM_RESEARCH_RATE_LIMIT="1000000/second",
        AGENTFARM_WORKER_SHUTDOWN_GRACE_S="5",
        AGENTFARM_LOG_FORMAT="json",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Cluster:
    """One benchmark's Redis, stub LLM, API and workers; ``close()`` stops them all."""

    def __init__(self, *, aof: bool = True, llm_latency_s: float = 0.0) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="agentfarm-bench-"))
        self.redis = Redis(self.workdir, aof=aof)
        self.children: list[Child] = []
        llm_port = free_port()
        self.llm = self._start(
            "llm", [sys.executable, "-m", "bench.stub_llm", "--port", str(llm_port), "--latency-s", str(llm_latency_s)]
        )
        self.llm_url = f"http://127.0.0.1:{llm_port}/v1"
        self._wait_port(llm_port, self.llm)
        self.api_url = ""
        self.api: Child | None = None
        self.worker: Child | None = None
        self.worker_processes = 1
        self.metrics_port = 0

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(self.redis.url, self.llm_url, CREWAI_STORAGE_DIR=str(self.workdir / "crewai"), **extra)

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Child:
        child_env = env or {**os.environ, "PYTHONPATH": str(ROOT)}
        child = Child(name, command, child_env, self.workdir)
        self.children.append(child)
        return child

    def _wait_port(self, port: int, child: Child, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            child.check_alive()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"bench: {child.name} did not listen on {port}:\n{child.log_text()[-3000:]}")

    def start_api(self, workers: int = 1) -> None:
        port = free_port()
        command = [*agentfarm(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        if workers > 1:
            command += ["--workers", str(workers)]
        self.api = self._start("api", command, self.env(AGENTFARM_LOG_LEVEL="warning"))
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.api.check_alive()
            try:
                if httpx.get(f"{self.api_url}/health/live", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"bench: the API did not answer:\n{self.api.log_text()[-3000:]}")

    def start_worker(self, concurrency: int, processes: int = 1, queues: tuple[str, ...] = ()) -> None:
        self.metrics_port = free_port()
        self.worker_processes = processes
        command = [*agentfarm(), "worker"]
        for queue in queues:
            command += ["--queue", queue]
        if processes > 1:
            command += ["--processes", str(processes)]
        env = self.env(AGENTFARM_WORKER_CONCURRENCY=str(concurrency), AGENTFARM_WORKER_METRICS_PORT=str(self.metrics_port))
        self.worker = self._start("worker", command, env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.worker.check_alive()
            if self.worker.log_text().count('"worker_started"') >= processes:
                return
            time.sleep(0.1)
        raise SystemExit(f"bench: the worker did not start:\n{self.worker.log_text()[-3000:]}")

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.children.remove(self.worker)
            self.worker = None

    def worker_pids(self) -> list[int]:
        """The worker process, or with ``--processes`` its children (which do the work)."""
        assert self.worker is not None
        if self.worker_processes == 1:
            return [self.worker.pid]
        return _children_of(self.worker.pid)

    def finished(self) -> float:
        """``agentfarm_tasks_finished_total`` (every kind and status), summed over the worker processes."""
        total = 0.0
        for offset in range(self.worker_processes):
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port + offset}/metrics", timeout=5).text
            total += sum(float(m[1]) for m in re.finditer(r"^agentfarm_tasks_finished_total\{[^}]*\} (\S+)", text, re.M))
        return total

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.redis.close()
        if os.environ.get("BENCH_KEEP"):  # the processes' logs, to see why a run failed
            print(f"bench: kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _children_of(pid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in raw.split()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def peak_rss_mib(pids: list[int]) -> float:
    """The largest peak RSS (VmHWM) among these processes, in MiB."""
    peaks = []
    for pid in pids:
        found = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        peaks.append(int(found[1]) / 1024 if found else 0.0)
    return max(peaks, default=0.0)


def tasks(api_url: str, newest: int) -> list[dict[str, Any]]:
    """The bench tenant's ``newest`` tasks, from the API's list pages (100 a page, newest first)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        while len(items) < newest:
            params: dict[str, str | int] = {"limit": min(100, newest - len(items))}
            if cursor:
                params["cursor"] = cursor
            page = client.get(f"{api_url}/v1/tasks", params=params)
            page.raise_for_status()
            body = page.json()
            items.extend(body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return items

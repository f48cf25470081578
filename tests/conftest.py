"""Real parts for every test: a redis-server on a free port, a scripted LLM over HTTP, a worker process."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import hypothesis
import pytest
from litestar.testing import AsyncTestClient
from redis import Redis

from jobs.kinds import KINDS
from jobs.settings import Settings, load_settings
from service.app import create_app
from tests.support.forked import CliProcess
from tests.support.llm_server import ScriptedLLM
from tests.support.page_server import PageServer
from tests.support.redis_server import RedisServer, free_port
from tests.support.search_server import SearchServer

if TYPE_CHECKING:
    from tests.support.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent

# The API fuzzer's long run, by choice (``--hypothesis-profile=thorough``); the default profile
# keeps Hypothesis's 100 examples per operation.
hypothesis.settings.register_profile("thorough", max_examples=2000)
ACME_KEY = "acme-test-key-0001"
BETA_KEY = "beta-test-key-0002"
SCRIPTED_MODEL = "openai/scripted-model"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def llm_server() -> Iterator[ScriptedLLM]:
    server = ScriptedLLM()
    yield server
    server.close()


@pytest.fixture(scope="session")
def search_server() -> Iterator[SearchServer]:
    """A stub SearXNG on loopback (``AGENTFARM_SEARCH_URL``)."""
    server = SearchServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def page_server() -> Iterator[PageServer]:
    """A stub web server with saved articles on loopback (readable with ``AGENTFARM_FETCH_ALLOW_PRIVATE``)."""
    server = PageServer()
    yield server
    server.close()


def service_env(redis_url: str, llm: ScriptedLLM | None, **extra: str) -> dict[str, str]:
    """The environment of a service process under test (no .env, no network but localhost)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
    env.update(
        AGENTFARM_REDIS_URL=redis_url,
        AGENTFARM_API_KEYS=f"acme:{ACME_KEY},beta:{BETA_KEY}",
        AGENTFARM_WORKER_CONCURRENCY="4",
        AGENTFARM_WORKER_HEARTBEAT_S="0.5",
        AGENTFARM_WORKER_METRICS_PORT="0",  # several workers share this host; tests that scrape pick a port
        AGENTFARM_WORKER_LEASE_S="1.5",
        AGENTFARM_WORKER_SHUTDOWN_GRACE_S="10",
        AGENTFARM_LOG_FORMAT="json",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    if llm is not None:
        env.update(
            AGENTFARM_LLM_MODEL=SCRIPTED_MODEL,
            AGENTFARM_LLM_BASE_URL=llm.base_url,
            AGENTFARM_LLM_API_KEY="scripted-key",
            AGENTFARM_LLM_TIMEOUT_S="20",
            AGENTFARM_LLM_MAX_RETRIES="0",  # failures reach the job's own retry policy
        )
    for kind in (name.upper() for name in KINDS):
        # Tests submit many tasks quickly and must not wait minutes for a retry.
        env[f"AGENTFARM_{kind}_RATE_LIMIT"] = "1000/second"
        env[f"AGENTFARM_{kind}_RETRY_BACKOFF_S"] = "0.1"
    env.update(extra)
    return env


def worker_registered(client: Redis, pid: int) -> bool:
    """Whether the worker with this pid has registered in Redis (its queues' worker sets)."""
    members = [m.decode() for k in client.keys("agentfarm:workers:*") for m in client.zrange(k, 0, -1)]
    return any(m.split(":")[1] == str(pid) for m in members)


class WorkerProcess:
    """``agentfarm worker`` as a real process of its own (forked from a template that has imported it)."""

    def __init__(self, env: dict[str, str], log_path: Path, *queues: str) -> None:
        args = ["worker"]
        for queue in queues:
            args += ["--queue", queue]
        self.log_path = log_path
        self.process = CliProcess(args, env, log_path, ROOT)

    def wait_started(self, redis_url: str, timeout_s: float = 60) -> None:
        client = Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if worker_registered(client, self.process.pid):
                client.close()
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start: {self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except TimeoutError:
                self.process.kill()
                self.process.wait(timeout=10)


class ApiProcess:
    """``agentfarm serve`` as a real process of its own (forked like ``WorkerProcess``)."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process = CliProcess(["serve", "--port", str(self.port), *args], env, log_path, ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"API did not start: {log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer, llm_server: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker process serving both queues, talking to the scripted LLM over HTTP."""
    proc = WorkerProcess(service_env(redis_server.url, llm_server), tmp_path_factory.mktemp("worker") / "worker.log")
    proc.wait_started(redis_server.url)
    yield proc
    proc.stop()


@pytest.fixture
def settings(redis_server: RedisServer, llm_server: ScriptedLLM) -> Settings:
    return load_settings(service_env(redis_server.url, llm_server), env_file=None)


@pytest.fixture
def clean_state(redis_server: RedisServer, llm_server: ScriptedLLM) -> Iterator[None]:
    """Each test starts with no tasks and a default-behaving LLM."""
    client = Redis.from_url(redis_server.url)
    for pattern in ("agentfarm:task:*", "agentfarm:tenant:*"):
        keys = list(client.scan_iter(pattern))
        if keys:
            client.delete(*keys)
    client.close()
    llm_server.reset()
    yield
    llm_server.reset()


@pytest.fixture
async def api(settings: Settings, clean_state: None) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real Litestar app, in process, against the test Redis."""
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


ACME = {"Authorization": f"Bearer {ACME_KEY}"}
BETA = {"Authorization": f"Bearer {BETA_KEY}"}


@pytest.fixture
def make_cluster(tmp_path: Path, llm_server: ScriptedLLM) -> Iterator[Callable[..., Cluster]]:
    """Private clusters (own Redis, workers) for tests that kill and restart parts; closed after the test."""
    from tests.support.cluster import Cluster  # noqa: PLC0415 - cluster imports this module

    clusters: list[Cluster] = []
    llm_server.reset()

    def make(**env: str) -> Cluster:
        folder = tmp_path / f"c{len(clusters)}"
        folder.mkdir()
        cluster = Cluster(folder, llm_server, **env)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
    llm_server.reset()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()

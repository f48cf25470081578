"""A private Agent Farm for one test: its own redis-server, worker processes and API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from litestar.testing import AsyncTestClient
from redis import Redis

from jobs.kinds import QUEUES, Queue
from jobs.models import Task
from jobs.settings import Settings, load_settings
from jobs.store import task_key
from service.app import create_app
from tests.conftest import WorkerProcess, service_env, worker_registered
from tests.support.llm_server import ScriptedLLM
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer


class Cluster:
    """Fault-injection tests kill and restart its parts; nothing is shared with other tests."""

    def __init__(self, tmp_path: Path, llm: ScriptedLLM, **env: str) -> None:
        self.tmp_path = tmp_path
        self.llm = llm
        self.redis = RedisServer()
        self.redis.start()
        self.env = service_env(self.redis.url, llm, **env)
        self.workers: list[WorkerProcess] = []

    @property
    def settings(self) -> Settings:
        return load_settings(self.env, env_file=None)

    def start_worker(self, *queues: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess({**self.env, **env}, self.tmp_path / f"worker-{len(self.workers)}.log", *queues)
        self.workers.append(worker)
        worker.wait_started(self.redis.url)
        return worker

    @asynccontextmanager
    async def worker_in_process(self, *queues: Queue) -> AsyncIterator[None]:
        """The worker's own ``serve`` on this test's event loop, for execution behaviour where the process
        is not the point: no interpreter start or crewai import (seconds of CPU each per worker process)."""
        from jobs.worker.process import serve  # noqa: PLC0415 - worker-only code, imported where a test asks

        running = asyncio.ensure_future(serve(self.settings, queues or QUEUES, handle_signals=False))
        redis = Redis.from_url(self.redis.url)

        try:
            started = await eventually(lambda: running.done() or worker_registered(redis, os.getpid()), timeout_s=30)
            assert started, "the in-process worker did not register"
            if running.done():
                running.result()  # it failed to start: say why
            yield
        finally:
            redis.close()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    @asynccontextmanager
    async def api(self) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
        async with AsyncTestClient(create_app(self.settings)) as client:
            yield client

    def worker_of(self, task_id: str) -> str | None:
        """The worker id the stored task names (internal bookkeeping the API does not serve)."""
        client = Redis.from_url(self.redis.url)
        try:
            raw = client.get(task_key(task_id))
        finally:
            client.close()
        return None if raw is None else msgspec.json.decode(raw, type=Task).worker_id

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.close()

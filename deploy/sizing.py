"""Redis sizing for deploy/README.md: memory per 10,000 tasks and Redis commands per task.

    .venv/bin/python deploy/sizing.py [--memory-only] [redis-server options...]

Needs redis-server on PATH; about a minute and a half (the worker run is half of it).
Options after the script's own are passed to redis-server, e.g. `--stream-node-max-bytes 1024`.

Starts a throw-away redis-server on a free port (no persistence) and measures, with
INFO memory (used_memory) and INFO commandstats:

1. queued: 10,000 research tasks submitted as the API does (TaskStore.create + enqueue:
   task record, its event stream, the tenant index, arq's job key and queue entry);
2. completed: 10,000 research tasks taken through a typical life with the service's own
   store (started, 6 progress steps, 5 pages read, usage, completed with a ~4 KB Markdown
   report) and arq's job removed, as a finished job leaves Redis;
3. commands per task: 200 research tasks run by a real worker process (`agentfarm worker
   --burst`, the offline demo model), counted from INFO commandstats.

    .venv/bin/python deploy/sizing.py --crews [CONCURRENCY ...]   (default 8 32 64)

4. crews per worker process: one worker process (`--burst`) against an OpenAI-compatible
   stub LLM that answers every call after 1 s (tests/support/llm_server.py), 3 x
   CONCURRENCY research tasks per run. Reports throughput, efficiency (the wall time an
   ideal worker would need, ceil(jobs / concurrency) x calls per job x 1 s, over the
   measured one) and the worker's CPU per job, which sets worker processes per core.
"""

# ruff: noqa: T201, S603, S607 - a measuring script: it prints and starts redis-server and a worker
from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crews.results import Report, Section, Usage  # noqa: E402
from jobs.connections import redis_client  # noqa: E402
from jobs.events import SourceRead  # noqa: E402
from jobs.models import Task, utcnow  # noqa: E402
from jobs.queue import QueueRedis, enqueue, job_key_prefix, queue_key  # noqa: E402
from jobs.settings import RedisConfig  # noqa: E402
from jobs.store import TaskStore  # noqa: E402

N = 10_000
RUN = 200
TTL_S = 86_400
PARAGRAPH = (
    "Solid-state batteries replace the liquid electrolyte with a ceramic or polymer separator, "
    "which promises higher energy density and fewer fires; the open questions are dendrites at "
    "high current, the cost of thin lithium-metal anodes and manufacturing yield at scale. "
)


def report() -> Report:
    sections = [Section(heading=f"Finding {i}", body=PARAGRAPH * 3) for i in range(1, 6)]
    return Report.build(title="Solid-state batteries in 2026", summary=PARAGRAPH, sections=sections)


def new_task() -> Task:
    now = utcnow()
    task_id = str(uuid.uuid4())
    return Task(
        id=task_id,
        kind="research",
        tenant="acme",
        params={
            "topic": "Solid-state batteries: where they stand",
            "crew_type": "general",
            "language": "en",
            "depth": "standard",
        },
        max_attempts=4,
        created_at=now,
        updated_at=now,
        job_id=task_id,
        trace_id=uuid.uuid4().hex,
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    )


def breakdown(sync: Redis) -> str:
    """MEMORY USAGE of one task's keys (bytes), by kind of key."""
    task_key = next(sync.scan_iter("agentfarm:task:*")).decode()
    task_id = task_key.rsplit(":", 1)[1]
    keys = {"record": task_key, "event log": f"agentfarm:events:{task_id}", "arq job": f"{job_key_prefix}{task_id}"}
    return ", ".join(f"{name} {sync.memory_usage(k) or 0} B" for name, k in keys.items() if sync.exists(k))


def used(sync: Redis) -> int:
    return int(sync.info("memory")["used_memory"])


def calls(sync: Redis) -> int:
    return sum(int(v["calls"]) for k, v in sync.info("commandstats").items() if k != "cmdstat_info")


async def submit(pool: QueueRedis, store: TaskStore, count: int) -> list[Task]:
    tasks = [new_task() for _ in range(count)]
    for task in tasks:
        await store.create(task)
        await enqueue(pool, task)
    return tasks


async def live_and_finish(pool: QueueRedis, store: TaskStore, task: Task, result: Report) -> None:
    await store.update(task.id, lambda t: t.started(run_token=1, worker_id="w1", job_id=t.id))
    for step in range(1, 7):
        await store.update(task.id, lambda t, s=step: t.with_progress(s * 14, f"agent step {s}"))
    for page in range(5):
        source = SourceRead(url=f"https://example.org/articles/solid-state-{page}", title=f"Article {page}")
        await store.update(task.id, lambda t: t, sources=lambda _t, s=source: (s,))
    usage = Usage(llm_calls=6, prompt_tokens=9_000, completion_tokens=2_400, model="openai/gpt-4o-mini")
    await store.update(task.id, lambda t: t.with_usage(usage, run_token=1))
    await store.update(task.id, lambda t: t.to("completed", "completed", result=result))
    # arq with keep_result=0: a finished job leaves no key and no queue entry.
    await pool.delete(job_key_prefix + task.id)
    await pool.zrem(queue_key("research"), task.id)


async def measure(port: int, *, worker: bool) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    sync = Redis.from_url(url)
    pool = redis_client(RedisConfig(url=url))  # the service's own client (msgpack job payloads)
    store = TaskStore(pool, TTL_S)
    result = report()
    server = sync.info("server")
    config = dict(sync.config_get("stream-node-max-*"))
    print(f"redis {server['redis_version']}, {config}; report: {len(result.markdown)} bytes of Markdown")

    sync.flushall()
    base, base_calls = used(sync), calls(sync)
    await submit(pool, store, N)
    queued = used(sync) - base
    submit_calls = (calls(sync) - base_calls) / N
    per_10k = queued / 2**20
    print(f"queued:    {queued / N:8.0f} B/task  {per_10k:6.1f} MiB per {N:,}  ({submit_calls:.1f} commands/submit)")
    print(f"           one task: {breakdown(sync)}")

    sync.flushall()
    base = used(sync)
    for task in await submit(pool, store, N):
        await live_and_finish(pool, store, task, result)
    completed = used(sync) - base
    events = sync.xlen(next(sync.scan_iter("agentfarm:events:*")))
    print(f"completed: {completed / N:8.0f} B/task  {completed / 2**20:6.1f} MiB per {N:,}  ({events} events)")
    print(f"           one task: {breakdown(sync)}")

    if not worker:
        await pool.aclose()
        return
    sync.flushall()
    await submit(pool, store, RUN)
    before = calls(sync)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
    env.update(
        AGENTFARM_REDIS_URL=url,
        AGENTFARM_WORKER_METRICS_PORT="0",
        AGENTFARM_WORKER_CONCURRENCY="8",
        OTEL_SDK_DISABLED="true",
        AGENTFARM_LOG_LEVEL="warning",
    )
    started = time.monotonic()
    agentfarm = shutil.which("agentfarm", path=str(ROOT / ".venv" / "bin")) or "agentfarm"
    # The event loop has nothing else to do meanwhile: the worker is the measurement.
    subprocess.run(  # noqa: ASYNC221
        [agentfarm, "worker", "--queue", "research", "--burst"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
        timeout=900,
    )
    elapsed = time.monotonic() - started
    done = sum(1 for k in sync.scan_iter("agentfarm:task:*") if b'"status":"completed"' in (sync.get(k) or b""))
    demo_events = sync.xlen(next(sync.scan_iter("agentfarm:events:*")))
    print(f"           one demo task: {breakdown(sync)} ({demo_events} events)")
    worker_calls = (calls(sync) - before) / RUN
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"worker run: {done}/{RUN} completed in {elapsed:.1f} s ({done / elapsed:.1f} tasks/s, one process,"
        f" concurrency 8, peak RSS {peak_mib:.0f} MiB); {worker_calls:.1f} Redis commands per task"
        " (worker side, including its polling and heartbeats while it ran)"
    )
    await pool.aclose()


LATENCY_S = 1.0


def crews(port: int, concurrencies: list[int]) -> None:
    """One worker process at each concurrency against a 1 s LLM: throughput, efficiency, CPU per job."""
    from tests.support.llm_server import ScriptedLLM  # noqa: PLC0415 - a test helper, only for this mode

    url = f"redis://127.0.0.1:{port}/0"
    sync = Redis.from_url(url)
    llm = ScriptedLLM()
    llm.default_delay_s = LATENCY_S
    llm._server.socket.listen(1024)
    agentfarm = shutil.which("agentfarm", path=str(ROOT / ".venv" / "bin")) or "agentfarm"
    print(f"LLM stub answering after {LATENCY_S} s; {os.cpu_count()} cores")

    def run_worker(env: dict[str, str]) -> float:
        """CPU seconds of one `agentfarm worker --burst` run."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [agentfarm, "worker", "--queue", "research", "--burst"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(),
            timeout=900,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    startup = -1.0
    try:
        for concurrency in concurrencies:
            sync.flushall()

            async def queue(count: int) -> None:
                pool = redis_client(RedisConfig(url=url))
                await submit(pool, TaskStore(pool, TTL_S), count)
                await pool.aclose()

            jobs = 3 * concurrency
            asyncio.run(queue(jobs))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFARM_", "OTEL_"))}
            env.update(
                AGENTFARM_REDIS_URL=url,
                AGENTFARM_WORKER_METRICS_PORT="0",
                AGENTFARM_WORKER_CONCURRENCY=str(concurrency),
                AGENTFARM_LLM_MODEL="openai/scripted-model",
                AGENTFARM_LLM_BASE_URL=llm.base_url,
                AGENTFARM_LLM_API_KEY="sizing",
                AGENTFARM_LLM_MAX_RETRIES="0",
                AGENTFARM_RESEARCH_RATE_LIMIT="100000/second",
                OTEL_SDK_DISABLED="true",
                AGENTFARM_LOG_LEVEL="warning",
                NO_PROXY="127.0.0.1,localhost",
            )
            if startup < 0:  # an empty queue: what start-up and shutdown alone cost
                sync.flushall()
                startup = run_worker(env)
                asyncio.run(queue(jobs))
            cpu = run_worker(env) - startup
            keys = list(sync.scan_iter("agentfarm:task:*"))
            records = [msgspec.json.decode(raw, type=Task) for k in keys if (raw := sync.get(k))]
            done = [t for t in records if t.status == "completed"]
            others = [(t.status, t.reason, t.error and t.error.message) for t in records if t.status != "completed"]
            assert len(done) == jobs, f"{len(done)}/{jobs} completed; the others: {others}"
            first = min(t.started_at for t in done if t.started_at)
            last = max(t.finished_at for t in done if t.finished_at)
            wall = (last - first).total_seconds()
            calls_per_job = sorted(t.usage.llm_calls for t in done)[len(done) // 2]
            ideal = -(-jobs // concurrency) * calls_per_job * LATENCY_S
            print(
                f"concurrency {concurrency:3d}: {jobs} jobs x {calls_per_job} calls in {wall:5.1f} s"
                f" ({jobs / wall:4.1f} jobs/s, efficiency {ideal / wall:.2f});"
                f" worker CPU {cpu * 1000 / jobs:.0f} ms/job (start-up of {startup:.1f} s excluded)"
            )
    finally:
        llm.close()
        sync.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    args = sys.argv[1:]
    worker = "--memory-only" not in args
    concurrencies = [int(a) for a in args if a.isdigit()] or [8, 32, 64]
    crew_mode = "--crews" in args
    extra = [] if crew_mode else [a for a in args if a != "--memory-only"]
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    Redis(port=port).ping()
                    break
                except RedisConnectionError:
                    time.sleep(0.05)
            if crew_mode:
                crews(port, concurrencies)
            else:
                asyncio.run(measure(port, worker=worker))
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()

"""The benchmarks of SPEC §10 (B1-B4) and the per-job figures, each returning plain numbers per repetition.

Definitions (as in issue 13, so the figures compare with the old design's):
- B1: ``wrk -t2 -c32 -d10s`` POSTing a basic research task; requests/s, p50, p99.
- B2: tasks submitted open-loop at a steady rate to one worker process of 2 slots
  (LLM 0 s); dispatch latency = the task's ``started_at - created_at`` (the
  worker's start of the job minus the API's acceptance), p50 and p99.
- B3: 2,000 tasks queued while the worker is paused (SIGSTOP), then drained by
  one worker process of 2 slots (LLM 0 s); jobs/s = jobs / (last finished -
  first started); worker CPU time per job from /proc; Redis commands per job
  from ``INFO commandstats`` (submit phase and worker phase apart).
- B4: 100 tasks at once, LLM 1 s per call, one worker process of 8 and of 32
  slots; ideal = ceil(100 / slots) x calls per job x 1 s; efficiency = ideal /
  wall (last finished - first created); peak RSS (VmHWM) of the worker.
- Idle: Redis commands/s over 10 s with an idle worker and API (``INFO`` itself excluded).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.cluster import API_KEY, Cluster, cpu_seconds, peak_rss_mib, tasks

BODY = {"topic": "solid-state batteries", "depth": "basic"}
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
Figures = dict[str, float]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _ts(raw: str) -> float:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


async def _submit(api_url: str, count: int, *, concurrency: int = 32, rate: float = 0.0) -> list[str]:
    """Submit ``count`` basic research tasks: as fast as ``concurrency`` allows, or open-loop at ``rate``/s."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=api_url, headers=HEADERS, limits=limits, timeout=60) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            if rate:
                await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
            async with gate:
                response = await client.post("/v1/tasks/research", json=BODY)
            if response.status_code != 202:
                raise SystemExit(f"bench: submit answered {response.status_code}: {response.text[:300]}")
            ids.append(response.json()["id"])

        await asyncio.gather(*(one(i) for i in range(count)))
    return ids


def submit(api_url: str, count: int, *, concurrency: int = 32, rate: float = 0.0) -> list[str]:
    return asyncio.run(_submit(api_url, count, concurrency=concurrency, rate=rate))


def wait_finished(cluster: Cluster, target: float, cap_s: float) -> tuple[float, bool]:
    """Wait until the worker has finished ``target`` tasks in all; (finished, whether it got there in time)."""
    deadline = time.monotonic() + cap_s
    while True:
        assert cluster.worker is not None
        cluster.worker.check_alive()
        done = cluster.finished()
        if done >= target:
            return done, True
        if time.monotonic() > deadline:
            return done, False
        time.sleep(0.1)


def warm_up(cluster: Cluster, count: int = 4) -> None:
    """A few jobs first: the first crew of a process pays one-off costs (lazy imports, connections)."""
    before = cluster.finished()
    submit(cluster.api_url, count, concurrency=count)
    _, ok = wait_finished(cluster, before + count, 120)
    if not ok:
        raise SystemExit("bench: warm-up jobs did not finish in 120 s")


# --- B1 -------------------------------------------------------------------------------------------

_WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"topic": "solid-state batteries", "depth": "basic"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def _wrk_seconds(raw: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", raw).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk_command(url: str, script: Path, duration_s: int) -> list[str]:
    return ["wrk", "-t2", "-c32", f"-d{duration_s}s", "--latency", "-s", str(script), f"{url}/v1/tasks/research"]


def b1(cluster: Cluster, duration_s: int = 10) -> Figures:
    script = cluster.workdir / "submit.lua"
    script.write_text(_WRK_SCRIPT % API_KEY)
    done = subprocess.run(wrk_command(cluster.api_url, script, duration_s), capture_output=True, text=True, check=True)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    lat = {m[1]: _wrk_seconds(m[2]) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        print(f"bench: wrk saw errors: {errors[0] if errors else ''} {socket_errors[0] if socket_errors else ''}")
    return {
        "rps": rps,
        "p50_ms": lat["50"] * 1000,
        "p99_ms": lat["99"] * 1000,
        "errors": float(errors[1]) if errors else 0.0,
    }


def wrk_warm_up(cluster: Cluster) -> None:
    script = cluster.workdir / "submit.lua"
    script.write_text(_WRK_SCRIPT % API_KEY)
    subprocess.run(wrk_command(cluster.api_url, script, 2), capture_output=True, check=True)


# --- B2 -------------------------------------------------------------------------------------------


def b2(cluster: Cluster, rate: float, duration_s: float, cap_s: float = 60) -> Figures:
    before = cluster.finished()
    count = round(rate * duration_s)
    ids = set(submit(cluster.api_url, count, rate=rate, concurrency=64))
    done, complete = wait_finished(cluster, before + count, cap_s)
    items = [t for t in tasks(cluster.api_url, count) if t["id"] in ids]
    waits = []
    for item in items:
        if item.get("started_at"):
            waits.append(_ts(item["started_at"]) - _ts(item["created_at"]))
        else:  # never started within the cap: at least this long
            waits.append(time.time() - _ts(item["created_at"]))
    return {
        "jobs": float(count),
        "p50_ms": percentile(waits, 50) * 1000,
        "p99_ms": percentile(waits, 99) * 1000,
        "max_ms": max(waits) * 1000,
        "unfinished": float(count - (done - before)) if not complete else 0.0,
    }


# --- B3 -------------------------------------------------------------------------------------------


def _calls(before: dict[str, int], after: dict[str, int]) -> int:
    """Commands between two snapshots, without the INFO calls that took them."""
    return sum(after.get(k, 0) - before.get(k, 0) for k in after if k != "info")


def b3(cluster: Cluster, jobs: int = 2000, cap_s: float = 60) -> Figures:
    redis = cluster.redis
    pids = cluster.worker_pids()
    before = cluster.finished()  # (its /metrics does not answer while it is paused)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # queue everything while the worker is paused
    try:
        commands0, reads0 = redis.commands(), redis.stat("total_reads_processed")
        ids = set(submit(cluster.api_url, jobs))
        commands1, reads1 = redis.commands(), redis.stat("total_reads_processed")
        cpu0 = cpu_seconds(pids)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    began = time.time()
    done, complete = wait_finished(cluster, before + jobs, cap_s)
    elapsed = time.time() - began
    cpu1 = cpu_seconds(pids)
    commands2 = redis.commands()
    finished = done - before
    figures: Figures = {
        "jobs": float(finished),
        "submit_commands_per_job": _calls(commands0, commands1) / jobs,
        "submit_round_trips_per_job": (reads1 - reads0 - 1) / jobs,
        "worker_commands_per_job": _calls(commands1, commands2) / max(finished, 1),
        "cpu_ms_per_job": (cpu1 - cpu0) * 1000 / max(finished, 1),
        "capped": 0.0 if complete else 1.0,
    }
    if complete:
        items = [t for t in tasks(cluster.api_url, jobs) if t["id"] in ids]
        first = min(_ts(t["started_at"]) for t in items)
        last = max(_ts(t["finished_at"]) for t in items)
        figures["jobs_per_s"] = jobs / (last - first)
        calls = [t["usage"]["llm_calls"] for t in items if t.get("usage")]
        figures["llm_calls_per_job"] = statistics.median(calls) if calls else math.nan
    else:
        figures["jobs_per_s"] = finished / elapsed
    figures["commands_per_job"] = figures["submit_commands_per_job"] + figures["worker_commands_per_job"]
    return figures


# --- B4 -------------------------------------------------------------------------------------------


def b4(cluster: Cluster, slots: int, jobs: int = 100, latency_s: float = 1.0, cap_s: float = 180) -> Figures:
    pids = cluster.worker_pids()
    before = cluster.finished()
    cpu0 = cpu_seconds(pids)
    ids = set(submit(cluster.api_url, jobs))
    done, complete = wait_finished(cluster, before + jobs, cap_s)
    cpu1 = cpu_seconds(pids)
    items = [t for t in tasks(cluster.api_url, jobs) if t["id"] in ids]
    calls = statistics.median(t["usage"]["llm_calls"] for t in items if t.get("usage"))
    ideal = math.ceil(jobs / slots) * calls * latency_s
    if complete:
        wall = max(_ts(t["finished_at"]) for t in items) - min(_ts(t["created_at"]) for t in items)
    else:
        wall = math.inf
    return {
        "jobs_per_s": jobs / wall,
        "wall_s": wall,
        "ideal_s": ideal,
        "efficiency": ideal / wall,
        "llm_calls_per_job": float(calls),
        "peak_rss_mib": peak_rss_mib(pids),
        "cpu_ms_per_job": (cpu1 - cpu0) * 1000 / max(done - before, 1),
    }


# --- idle -----------------------------------------------------------------------------------------


def idle(cluster: Cluster, seconds: float = 10) -> Figures:
    redis = cluster.redis
    time.sleep(1)
    before = redis.commands()
    time.sleep(seconds)
    after = redis.commands()
    by_command = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "info"}
    figures: Figures = {"commands_per_s": sum(by_command.values()) / seconds}
    for name, count in sorted(by_command.items(), key=lambda kv: -kv[1])[:3]:
        if count:
            figures[f"{name}_per_s"] = count / seconds
    return figures


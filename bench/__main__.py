"""``python -m bench [--only b1,b3] [--reps 3]`` (what ``make bench`` runs): run the benchmarks, write docs/benchmarks.md.

Each suite starts its own processes (bench/cluster.py), runs its repetitions
and stores its raw figures in bench/results.json; the document is rebuilt from
every suite stored there, so ``make bench B=b3`` refreshes B3 and keeps the
others (each section says when it ran).
"""

# ruff: noqa: T201

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import benchmarks as b
from bench.cluster import ROOT, Cluster
from bench.report import write_report

RESULTS = ROOT / "bench" / "results.json"
ANALYSIS = ROOT / "bench" / "analysis.md"  # the hand-written part of the document: where the time goes
BASELINE = ROOT / "bench" / "baseline.json"  # figures of the code before issue 13 (the "before" column), if kept
DOC = ROOT / "docs" / "benchmarks.md"
Runs = dict[str, list[b.Figures]]


def _reps(reps: int, label: str, step: Callable[[], b.Figures], runs: Runs) -> None:
    for index in range(reps):
        figures = step()
        runs.setdefault(label, []).append(figures)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
        print(f"  {label} #{index + 1}: {shown}", flush=True)


def suite_b1(reps: int) -> Runs:
    runs: Runs = {}
    for aof in (True, False):
        cluster = Cluster(aof=aof)
        try:
            for processes in (1, 2):
                cluster.start_api(workers=processes)
                b.wrk_warm_up(cluster)
                _reps(reps, f"b1 api={processes} aof={'yes' if aof else 'no'}", lambda c=cluster: b.b1(c), runs)
                assert cluster.api is not None
                cluster.api.stop()
                cluster.children.remove(cluster.api)
        finally:
            cluster.close()
    return runs


def suite_b2(reps: int) -> Runs:
    runs: Runs = {}
    cluster = Cluster(aof=True)
    try:
        cluster.start_api()
        cluster.start_worker(concurrency=2, queues=("research",))
        b.warm_up(cluster)
        for rate, duration_s in ((20.0, 10.0), (4.0, 15.0)):
            _reps(reps, f"b2 rate={rate:g}/s", lambda r=rate, d=duration_s: b.b2(cluster, r, d), runs)
    finally:
        cluster.close()
    return runs


B3_JOBS = 2000


def suite_b3(reps: int) -> Runs:
    runs: Runs = {}
    for aof in (True, False):
        cluster = Cluster(aof=aof)
        try:
            cluster.start_api()
            cluster.start_worker(concurrency=2, queues=("research",))
            b.warm_up(cluster)
            label = f"b3 aof={'yes' if aof else 'no'}"

            def step(c: Cluster = cluster) -> b.Figures:
                figures = b.b3(c, jobs=B3_JOBS)
                if figures["capped"]:  # what is left queued would count in the next repetition: start afresh
                    c.stop_worker()
                    c.redis.call("FLUSHALL")
                    c.start_worker(concurrency=2, queues=("research",))
                    b.warm_up(c)
                return figures

            _reps(reps, label, step, runs)
        finally:
            cluster.close()
    return runs


def suite_b4(reps: int) -> Runs:
    runs: Runs = {}
    cluster = Cluster(aof=True, llm_latency_s=1.0)
    try:
        cluster.start_api()
        for slots in (8, 32):
            cluster.start_worker(concurrency=slots, queues=("research",))
            b.warm_up(cluster, count=slots)
            _reps(reps, f"b4 slots={slots}", lambda s=slots: b.b4(cluster, s), runs)
            cluster.stop_worker()
    finally:
        cluster.close()
    return runs


def suite_idle(reps: int) -> Runs:
    runs: Runs = {}
    cluster = Cluster(aof=True)
    try:
        cluster.start_api()
        cluster.start_worker(concurrency=2, queues=("research",))
        b.warm_up(cluster)
        _reps(1, "idle worker", lambda: b.idle(cluster), runs)
    finally:
        cluster.close()
    return runs


SUITES: dict[str, Callable[[int], Runs]] = {
    "b1": suite_b1,
    "b2": suite_b2,
    "b3": suite_b3,
    "b4": suite_b4,
    "idle": suite_idle,
}


def _machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))

    def out(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"

    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    redis_version = out("redis-server", "--version").split(" v=")[-1].split()[0] if out("redis-server", "--version") else "?"
    return {
        "nproc": out("nproc"),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version,
        "wrk": (out("wrk", "-v").splitlines() or ["?"])[0].split(" [")[0],
        "crewai": version("crewai"),
        "hypercorn": version("hypercorn"),
        "arq": version("arq"),
        "commit": out("git", "rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if out("git", "status", "--porcelain") else ""),
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated suites (default all): {', '.join(SUITES)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each figure (default 3)")
    parser.add_argument("--b3-jobs", type=int, default=2000, help="jobs B3 queues and drains (default 2000)")
    parser.add_argument("--results", default=str(RESULTS), help="where the raw figures are kept")
    parser.add_argument("--no-doc", action="store_true", help="print only; keep bench/results.json and the doc")
    args = parser.parse_args(argv)
    chosen = [s.strip().lower() for s in args.only.split(",") if s.strip()] or list(SUITES)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    global B3_JOBS  # noqa: PLW0603
    B3_JOBS = args.b3_jobs
    results = Path(args.results)
    stored: dict[str, Any] = json.loads(results.read_text()) if results.exists() else {}
    machine = _machine()
    started = time.monotonic()
    for name in chosen:
        print(f"bench {name} ...", flush=True)
        began = time.monotonic()
        load = Path("/proc/loadavg").read_text().split()[:3]
        runs = SUITES[name](args.reps)
        stored[name] = {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.monotonic() - began),
            "load_before": load,
            "reps": args.reps,
            "machine": machine,
            "runs": runs,
        }
        print(f"bench {name}: {time.monotonic() - began:.0f} s", flush=True)
    print(f"bench: {time.monotonic() - started:.0f} s in all", flush=True)
    results.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    if args.no_doc:
        return 0
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() and results != BASELINE else None
    command = " ".join(["python -m bench", *(argv or sys.argv[1:])])
    analysis = ANALYSIS.read_text() if ANALYSIS.exists() else ""
    DOC.write_text(write_report(stored, machine, command, baseline, analysis))
    print(f"bench: wrote {DOC.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/benchmarks.md from the stored figures (bench/results.json, and bench/baseline.json when present)."""

from __future__ import annotations

import math
import statistics
from typing import Any

# (suite, label prefix, figure, unit, target as text, check) — the rows of the summary table, in order.
Check = tuple[str, float] | None
SUMMARY: list[tuple[str, str, str, str, str, Check]] = [
    ("b3", "b3 aof=no", "cpu_ms_per_job", "ms", "≤ 30 ms", ("<=", 30)),
    ("b3", "b3 aof=yes", "cpu_ms_per_job", "ms", "≤ 30 ms", ("<=", 30)),
    ("b3", "b3 aof=no", "jobs_per_s", "jobs/s", "≥ 40", (">=", 40)),
    ("b3", "b3 aof=yes", "jobs_per_s", "jobs/s", "≥ 40", (">=", 40)),
    ("b3", "b3 aof=no", "commands_per_job", "", "≤ 35", ("<=", 35)),
    ("b3", "b3 aof=no", "submit_commands_per_job", "", "", None),
    ("b3", "b3 aof=no", "submit_round_trips_per_job", "", "≤ 4", ("<=", 4)),
    ("b3", "b3 aof=no", "worker_commands_per_job", "", "", None),
    ("b1", "b1 api=1 aof=no", "rps", "req/s", "≥ 1,500", (">=", 1500)),
    ("b1", "b1 api=1 aof=no", "p99_ms", "ms", "≤ 40 ms", ("<=", 40)),
    ("b1", "b1 api=2 aof=no", "rps", "req/s", "≥ 2,838 (2× old 1,419)", (">=", 2838)),
    ("b1", "b1 api=2 aof=no", "p99_ms", "ms", "≤ 40 ms", ("<=", 40)),
    ("b1", "b1 api=1 aof=yes", "rps", "req/s", "", None),
    ("b1", "b1 api=2 aof=yes", "rps", "req/s", "", None),
    ("b2", "b2 rate=20/s", "p50_ms", "ms", "", None),
    ("b2", "b2 rate=20/s", "p99_ms", "ms", "≤ 5 ms", ("<=", 5)),
    ("b2", "b2 rate=4/s", "p50_ms", "ms", "", None),
    ("b2", "b2 rate=4/s", "p99_ms", "ms", "", None),
    ("b4", "b4 slots=8", "efficiency", "", "≥ 0.95", (">=", 0.95)),
    ("b4", "b4 slots=8", "jobs_per_s", "jobs/s", "", None),
    ("b4", "b4 slots=8", "peak_rss_mib", "MiB", "", None),
    ("b4", "b4 slots=32", "efficiency", "", "≥ 0.90", (">=", 0.90)),
    ("b4", "b4 slots=32", "jobs_per_s", "jobs/s", "", None),
    ("b4", "b4 slots=32", "peak_rss_mib", "MiB", "≤ 400 MiB", ("<=", 400)),
    ("b4", "b4 slots=32", "cpu_ms_per_job", "ms", "", None),
    ("idle", "idle worker", "commands_per_s", "cmd/s", "≤ 2", ("<=", 2)),
]


def _values(stored: dict[str, Any], suite: str, label: str, figure: str) -> list[float]:
    runs = stored.get(suite, {}).get("runs", {}).get(label, [])
    return [float(r[figure]) for r in runs if figure in r and not math.isnan(float(r[figure]))]


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "∞"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    median = statistics.median(values)
    if len(values) == 1:
        return _fmt(median)
    return f"{_fmt(median)} ({_fmt(min(values))}–{_fmt(max(values))})"


def _met(values: list[float], check: Check) -> str:
    if check is None or not values:
        return ""
    op, bound = check
    median = statistics.median(values)
    ok = median <= bound if op == "<=" else median >= bound
    return "yes" if ok else "**no**"


def write_report(
    stored: dict[str, Any],
    machine: dict[str, Any],
    command: str,
    baseline: dict[str, Any] | None = None,
    analysis: str = "",
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. SPEC §10 defines the benchmarks;",
        "bench/benchmarks.py states exactly how each figure is measured. Every figure is the median of its",
        "repetitions, with the range (min–max) in brackets.",
        "",
        "**Noise.** The machine has 2 cores shared by the API, the worker, Redis, the stub LLM and the load",
        "generator (and, while this was measured, other engineers' test runs): a figure can move by 10–30 %",
        "between runs. Compare figures of one run, or medians of several.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu')} × {machine.get('nproc')}, RAM {machine.get('ram_gib')} GiB, "
        f"Linux {machine.get('kernel')}",
        f"- Python {machine.get('python')}, Redis {machine.get('redis')}, {machine.get('wrk')}, "
        f"crewai {machine.get('crewai')}, hypercorn {machine.get('hypercorn')}, arq {machine.get('arq')}",
        f"- Commit {machine.get('commit')}",
        "",
        "## Commands",
        "",
        "- `make bench` (all suites) or `make bench B=b3` (one suite; the others keep their stored figures);",
        "  `python -m bench --only b3 --b3-jobs 500 --reps 1` for a quick look.",
        f"- This document: `{command}`.",
        "- B1 load: `wrk -t2 -c32 -d10s --latency -s submit.lua http://127.0.0.1:PORT/v1/tasks/research`"
        " (POST of a basic research task).",
        "",
        "## Summary and targets (issue 13)",
        "",
    ]
    header = "| figure | unit | this run | target | met |"
    rule = "|---|---|---|---|---|"
    if baseline:
        header = "| figure | unit | before (baseline) | this run | target | met |"
        rule = "|---|---|---|---|---|---|"
    lines += [header, rule]
    for suite, label, figure, unit, target, check in SUMMARY:
        values = _values(stored, suite, label, figure)
        if not values and not (baseline and _values(baseline, suite, label, figure)):
            continue
        cells = [f"{label}: {figure}", unit]
        if baseline:
            cells.append(_cell(_values(baseline, suite, label, figure)))
        cells += [_cell(values), target, _met(values, check)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Every figure", ""]
    for suite in sorted(stored):
        entry = stored[suite]
        lines += [
            f"### {suite} — {entry.get('when')}, {entry.get('seconds')} s, {entry.get('reps')} repetition(s), "
            f"load average before {' '.join(entry.get('load_before', []))}",
            "",
        ]
        for label, runs in entry.get("runs", {}).items():
            figures = sorted({k for r in runs for k in r})
            lines.append(f"- **{label}**: " + ", ".join(f"{k} {_cell(_values(stored, suite, label, k))}" for k in figures))
        lines.append("")
    if baseline:
        lines += [
            "## Baseline",
            "",
            f"The 'before' column: {baseline.get('_about', 'bench/baseline.json')}",
            "",
        ]
    if analysis:
        lines += [analysis.rstrip(), ""]
    return "\n".join(lines) + "\n"

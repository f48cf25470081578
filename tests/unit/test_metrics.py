"""Prometheus metrics: exact names and labels on the exposition page, queue gauges read at scrape time."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from jobs.kinds import KINDS
from jobs.metrics import (
    DISPATCH_LATENCY,
    LLM_ERRORS,
    QUEUE_COLLECTOR,
    REGISTRY,
    TASK_RETRIES,
    TASKS_SUBMITTED,
    RedisQueueCollector,
    llm_usage,
    render_metrics,
    start_worker_metrics_server,
    task_finished,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def no_queues() -> dict[str, tuple[int, int]]:
    return {}


def parse(page: bytes) -> Samples:
    """Every sample on an exposition page, keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape() -> Samples:
    return parse(await render_metrics(REGISTRY, no_queues))


class TestTaskMetrics:
    async def test_submitted_finished_and_retries_are_counted_by_kind(self) -> None:
        """Submissions, outcomes and retries show up under their exact names, labelled by kind and status."""
        before = await scrape()
        TASKS_SUBMITTED.labels(kind="swot").inc()
        TASK_RETRIES.labels(kind="swot").inc()
        task_finished("swot", "failed", 12.5)
        after = await scrape()

        for name, labels in [
            ("agentfarm_tasks_submitted_total", {"kind": "swot"}),
            ("agentfarm_task_retries_total", {"kind": "swot"}),
            ("agentfarm_tasks_finished_total", {"kind": "swot", "status": "failed"}),
            ("agentfarm_task_duration_seconds_count", {"kind": "swot", "status": "failed"}),
        ]:
            assert (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0) == 1, name
        bucket = "agentfarm_task_duration_seconds_bucket"
        for le, added in (("10.0", 0), ("20.0", 1)):  # 12.5 s lands in the 20 s bucket, not the 10 s one
            labels = {"kind": "swot", "status": "failed", "le": le}
            assert (value(after, bucket, **labels) or 0) - (value(before, bucket, **labels) or 0) == added

    async def test_every_kind_and_outcome_exists_before_the_first_event(self) -> None:
        """Series start at 0 for every kind, so rate() and alerts work from the first scrape."""
        samples = await scrape()
        for kind in KINDS:
            assert value(samples, "agentfarm_tasks_submitted_total", kind=kind) is not None
            assert value(samples, "agentfarm_task_retries_total", kind=kind) is not None
            for status in ("completed", "failed", "cancelled"):
                assert value(samples, "agentfarm_tasks_finished_total", kind=kind, status=status) is not None

    async def test_histogram_buckets_span_the_documented_ranges(self) -> None:
        """Task durations are bucketed from 1 s to 30 min, dispatch latency from 5 ms to 5 min."""
        task_finished("research", "completed", 0.5)
        DISPATCH_LATENCY.labels(kind="research", queue="research").observe(0.003)
        samples = await scrape()

        duration = {k[1] for k in samples if k[0] == "agentfarm_task_duration_seconds_bucket"}
        latency = {k[1] for k in samples if k[0] == "agentfarm_dispatch_latency_seconds_bucket"}
        les_duration = {float(dict(labels)["le"]) for labels in duration}
        les_latency = {float(dict(labels)["le"]) for labels in latency}
        assert min(les_duration) == 1.0
        assert max(les_duration - {float("inf")}) == 1800.0
        assert min(les_latency) == 0.005
        assert max(les_latency - {float("inf")}) == 300.0
        assert value(
            samples, "agentfarm_dispatch_latency_seconds_bucket", kind="research", queue="research", le="0.005"
        )


class TestLLMMetrics:
    async def test_calls_tokens_cost_and_errors_are_labelled(self) -> None:
        """Calls (by model, kind), tokens and cost (by model, tenant, kind) and errors (by model, type) add up."""
        model = "openai/metrics-test-model"
        llm_usage(model, "investment", "acme", calls=3, prompt_tokens=120, completion_tokens=45, cost_usd=0.25)
        llm_usage(model, "investment", "acme", calls=1, prompt_tokens=10, completion_tokens=0, cost_usd=0.125)
        llm_usage(model, "investment", "globex", calls=1, prompt_tokens=7, completion_tokens=2)
        LLM_ERRORS.labels(model=model, error_type="RateLimitError").inc()
        samples = await scrape()

        acme = {"model": model, "tenant": "acme", "kind": "investment"}
        assert value(samples, "agentfarm_llm_calls_total", model=model, kind="investment") == 5
        assert value(samples, "agentfarm_llm_tokens_total", **acme, type="prompt") == 130
        assert value(samples, "agentfarm_llm_tokens_total", **acme, type="completion") == 45
        assert value(samples, "agentfarm_llm_tokens_total", **{**acme, "tenant": "globex"}, type="prompt") == 7
        assert value(samples, "agentfarm_llm_cost_usd_total", **acme) == 0.375
        assert value(samples, "agentfarm_llm_cost_usd_total", **{**acme, "tenant": "globex"}) is None, "no price"
        assert value(samples, "agentfarm_llm_errors_total", model=model, error_type="RateLimitError") == 1


class TestQueueGauges:
    async def test_snapshot_values_appear_per_queue(self) -> None:
        """Queue depth and live workers read at scrape time appear as gauges per queue."""

        async def snapshot() -> dict[str, tuple[int, int]]:
            return {"research": (7, 2), "specialized": (0, 0)}

        page = await render_metrics(REGISTRY, snapshot)
        samples = parse(page)

        assert value(samples, "agentfarm_queue_depth", queue="research") == 7
        assert value(samples, "agentfarm_workers_live", queue="research") == 2
        assert value(samples, "agentfarm_queue_depth", queue="specialized") == 0
        assert value(samples, "agentfarm_workers_live", queue="specialized") == 0
        assert b"# TYPE agentfarm_queue_depth gauge" in page

    async def test_each_scrape_reads_fresh_values(self) -> None:
        """A scrape never shows an earlier scrape's queue figures."""
        depths = iter([(5, 1), (1, 3)])

        async def snapshot() -> dict[str, tuple[int, int]]:
            return {"research": next(depths)}

        first = parse(await render_metrics(REGISTRY, snapshot))
        second = parse(await render_metrics(REGISTRY, snapshot))
        assert value(first, "agentfarm_queue_depth", queue="research") == 5
        assert value(second, "agentfarm_queue_depth", queue="research") == 1
        assert value(second, "agentfarm_workers_live", queue="research") == 3

    async def test_redis_down_still_serves_the_counters(self) -> None:
        """When Redis cannot be read, /metrics still answers with the counters and leaves the gauges out."""

        async def broken() -> dict[str, tuple[int, int]]:
            raise ConnectionError("redis is down")

        samples = parse(await render_metrics(REGISTRY, broken))
        assert value(samples, "agentfarm_tasks_submitted_total", kind="research") is not None
        assert not any(name in {"agentfarm_queue_depth", "agentfarm_workers_live"} for name, _ in samples)

    async def test_slow_redis_does_not_hold_the_scrape(self) -> None:
        """A snapshot slower than the timeout is abandoned, so the scrape answers within Prometheus's deadline."""

        async def stuck() -> dict[str, tuple[int, int]]:
            await asyncio.sleep(10)
            return {"research": (1, 1)}

        loop = asyncio.get_running_loop()
        started = loop.time()
        samples = parse(await render_metrics(REGISTRY, stuck, timeout_s=0.1))
        assert loop.time() - started < 1
        assert value(samples, "agentfarm_queue_depth", queue="research") is None

    async def test_collector_works_in_any_registry(self) -> None:
        """A registry of its own (e.g. another app in tests) gets the gauges from its own collector."""
        registry = CollectorRegistry()
        collector = RedisQueueCollector()
        registry.register(collector)
        Counter("isolated_things", "Things.", registry=registry).inc()

        async def snapshot() -> dict[str, tuple[int, int]]:
            return {"research": (4, 1)}

        samples = parse(await render_metrics(registry, snapshot, collector=collector))
        assert value(samples, "agentfarm_queue_depth", queue="research") == 4
        assert value(samples, "isolated_things_total") == 1
        assert not any(name.startswith("agentfarm_tasks") for name, _ in samples)
        assert QUEUE_COLLECTOR is not collector


class TestExposition:
    def test_worker_serves_its_registry_over_http(self) -> None:
        """A worker's metrics port answers /metrics with this process's counters, in Prometheus's text format."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        TASKS_SUBMITTED.labels(kind="technical_review")
        start_worker_metrics_server(port, addr="127.0.0.1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read()
            content_type = response.headers["Content-Type"]
        assert content_type.startswith("text/plain; version=0.0.4"), content_type
        assert b'agentfarm_tasks_finished_total{kind="technical_review",status="completed"}' in body

    def test_port_zero_serves_nothing(self) -> None:
        """Port 0 turns the worker's metrics server off instead of binding a random port."""
        threads = threading.active_count()
        start_worker_metrics_server(0)
        assert threading.active_count() == threads

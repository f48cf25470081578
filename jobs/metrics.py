"""Prometheus metrics for the API and the workers, in one registry per process.

Every process (the API, each worker) counts what it did itself and exposes its
own counters: the API at ``GET /metrics``, a worker on its own port
(``start_worker_metrics_server``). Prometheus scrapes each process as a separate
target and queries aggregate across them (``sum by (kind) (rate(...))``), so no
shared state or multiprocess mode is needed. That holds as long as one target
is one process: run the API with a single hypercorn worker per container, or
each hypercorn worker's counters would be sampled at random per scrape.

What only Redis knows (queue depth, live workers) is not counted but read at
scrape time by the API, once, so the figures do not depend on which worker is
scraped; workers never expose them.

Metrics live in ``REGISTRY``, not prometheus_client's global default registry,
so importing this module twice (tests with ``--import-mode=importlib``) or
libraries registering their own collectors cannot clash with ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from crews.sources import events as source_events
from jobs.kinds import KINDS

_log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

TaskOutcome = Literal["completed", "failed", "cancelled"]
TokenType = Literal["prompt", "completion"]
# queue -> (jobs waiting, live workers)
QueueSnapshot = Mapping[str, tuple[int, int]]

OUTCOMES: tuple[TaskOutcome, ...] = ("completed", "failed", "cancelled")

# A crew takes from a few seconds (demo model) to the 30-minute time limit.
TASK_DURATION_BUCKETS = (
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    180.0,
    300.0,
    450.0,
    600.0,
    900.0,
    1200.0,
    1800.0,
)
# Enqueue to pick-up: milliseconds with an idle worker, minutes behind a backlog.
DISPATCH_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

REGISTRY = CollectorRegistry()

TASKS_SUBMITTED = Counter(
    "agentfarm_tasks_submitted",
    "Tasks accepted by the API and put on a queue.",
    ["kind"],
    registry=REGISTRY,
)
TASKS_FINISHED = Counter(
    "agentfarm_tasks_finished",
    "Tasks that reached a final status (completed, failed, cancelled).",
    ["kind", "status"],
    registry=REGISTRY,
)
TASK_RETRIES = Counter(
    "agentfarm_task_retries",
    "Task runs that were a retry of an earlier attempt.",
    ["kind"],
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    "agentfarm_task_duration_seconds",
    "Wall time of a task's run in the worker, from start to its final status.",
    ["kind", "status"],
    buckets=TASK_DURATION_BUCKETS,
    registry=REGISTRY,
)
DISPATCH_LATENCY = Histogram(
    "agentfarm_dispatch_latency_seconds",
    "Time from a task being queued to a worker starting it.",
    ["kind", "queue"],
    buckets=DISPATCH_LATENCY_BUCKETS,
    registry=REGISTRY,
)
LLM_CALLS = Counter(
    "agentfarm_llm_calls",
    "LLM calls made by crews.",
    ["model", "kind"],
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "agentfarm_llm_tokens",
    "LLM tokens used by crews, by type (prompt, completion), tenant and kind.",
    ["model", "tenant", "kind", "type"],
    registry=REGISTRY,
)
LLM_COST = Counter(
    "agentfarm_llm_cost_usd",
    "What crews' LLM calls cost in US dollars, at the configured prices (AGENTFARM_LLM_PRICE_*_PER_MTOK).",
    ["model", "tenant", "kind"],
    registry=REGISTRY,
)
LLM_ERRORS = Counter(
    "agentfarm_llm_errors",
    "LLM calls that failed, by the error's type.",
    ["model", "error_type"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "agentfarm_webhook_attempts",
    "Webhook POSTs, by result: ok (2xx) or error (another status, a timeout, a refused address).",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "agentfarm_webhook_deliveries",
    "Webhook deliveries that ended: delivered, or failed after their last attempt.",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "agentfarm_webhook_attempt_seconds",
    "Time of one webhook POST, answered or not.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
SOURCE_SEARCHES = Counter(
    "agentfarm_source_searches",
    "Search backend queries of the sources stage, by backend and outcome (ok, empty: no results, error).",
    ["backend", "outcome"],
    registry=REGISTRY,
)
SOURCE_FETCH_ERRORS = Counter(
    "agentfarm_source_fetch_errors",
    "Pages of search results that could not be read, by reason (refused address, timeout, too_large, ...).",
    ["reason"],
    registry=REGISTRY,
)
CITATIONS_REMOVED = Counter(
    "agentfarm_citations_removed",
    "Citations the citation gate removed from reports (ids and URLs of pages the task did not read).",
    ["kind"],
    registry=REGISTRY,
)


def _source_search(backend: str, outcome: str) -> None:
    SOURCE_SEARCHES.labels(backend=backend, outcome=outcome).inc()


def _source_fetch_error(reason: str) -> None:
    SOURCE_FETCH_ERRORS.labels(reason=reason).inc()


def _citations_removed(kind: str, count: int) -> None:
    CITATIONS_REMOVED.labels(kind=kind).inc(count)


# crews must not import jobs: the sources stage reports through its listeners.
source_events.LISTENERS.search.append(_source_search)
source_events.LISTENERS.fetch_error.append(_source_fetch_error)
source_events.LISTENERS.citations_removed.append(_citations_removed)


class RedisQueueCollector(Collector):
    """``agentfarm_queue_depth`` and ``agentfarm_workers_live`` from the last snapshot taken.

    prometheus_client calls ``collect()`` synchronously while rendering, where
    the API cannot await Redis; so ``render_metrics`` awaits a snapshot first,
    hands it over with ``update()``, and renders straight after, with no await in
    between. A snapshot is used by one render only: a failed read shows no
    gauges rather than stale ones.
    """

    def __init__(self) -> None:
        self._snapshot: dict[str, tuple[int, int]] = {}

    def update(self, snapshot: QueueSnapshot) -> None:
        self._snapshot = dict(snapshot)

    def clear(self) -> None:
        self._snapshot = {}

    def describe(self) -> Iterable[Metric]:
        # Declared so registration does not call collect() (which has no data yet).
        return [
            GaugeMetricFamily("agentfarm_queue_depth", _QUEUE_DEPTH_HELP, labels=["queue"]),
            GaugeMetricFamily("agentfarm_workers_live", _WORKERS_LIVE_HELP, labels=["queue"]),
        ]

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        if not snapshot:
            return
        depth = GaugeMetricFamily("agentfarm_queue_depth", _QUEUE_DEPTH_HELP, labels=["queue"])
        live = GaugeMetricFamily("agentfarm_workers_live", _WORKERS_LIVE_HELP, labels=["queue"])
        for queue, (waiting, workers) in sorted(snapshot.items()):
            depth.add_metric([queue], waiting)
            live.add_metric([queue], workers)
        yield depth
        yield live


_QUEUE_DEPTH_HELP = "Jobs waiting on the queue, read from Redis at scrape time."
_WORKERS_LIVE_HELP = "Worker processes serving the queue whose heartbeat is recent, read from Redis at scrape time."

QUEUE_COLLECTOR = RedisQueueCollector()
REGISTRY.register(QUEUE_COLLECTOR)


def _preinitialise(kinds: Iterable[str]) -> None:
    # Series that exist at 0 from the start make rate() and alerts work before
    # the first event, instead of the series appearing out of nowhere.
    for kind in kinds:
        TASKS_SUBMITTED.labels(kind=kind)
        TASK_RETRIES.labels(kind=kind)
        for status in OUTCOMES:
            TASKS_FINISHED.labels(kind=kind, status=status)
        CITATIONS_REMOVED.labels(kind=kind)
    for result in ("ok", "error"):
        WEBHOOK_ATTEMPTS.labels(result=result)
    for outcome in ("delivered", "failed"):
        WEBHOOK_DELIVERIES.labels(outcome=outcome)


_preinitialise(KINDS)


async def render_metrics(
    registry: CollectorRegistry,
    queue_snapshot: Callable[[], Awaitable[QueueSnapshot]],
    *,
    collector: RedisQueueCollector = QUEUE_COLLECTOR,
    timeout_s: float = 2.0,
) -> bytes:
    """The exposition text of ``registry``, with queue gauges read just now through ``queue_snapshot``.

    When the snapshot fails or takes longer than ``timeout_s`` (Redis down), the
    page is still served without the queue gauges: the process's own counters
    stay visible and the gauges' absence is what alerts on.
    ``collector`` must be registered in ``registry`` for the gauges to appear.
    """
    try:
        snapshot = await asyncio.wait_for(queue_snapshot(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - a metrics page without gauges beats no page
        _log.warning("queue snapshot for /metrics failed", exc_info=True)
        snapshot = {}
    collector.update(snapshot)
    # No await from update() to here, so concurrent scrapes cannot mix snapshots.
    return generate_latest(registry)


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - Prometheus scrapes from elsewhere
    """Serve ``REGISTRY`` at ``http://addr:port/metrics`` on a daemon thread; port 0 serves nothing.

    Each worker process on one host needs its own port.
    """
    if port == 0:
        return
    start_http_server(port, addr=addr, registry=REGISTRY)
    _log.info("worker metrics served on %s:%d", addr, port)


def task_finished(kind: str, status: TaskOutcome, duration_s: float) -> None:
    """Count a task reaching a final status and how long its run took."""
    TASKS_FINISHED.labels(kind=kind, status=status).inc()
    TASK_DURATION.labels(kind=kind, status=status).observe(max(0.0, duration_s))


def llm_usage(
    model: str,
    kind: str,
    tenant: str,
    *,
    calls: int,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: float | None = None,
) -> None:
    """Add what one task spent since its last report (from its ``Usage``) to the counters."""
    if calls > 0:
        LLM_CALLS.labels(model=model, kind=kind).inc(calls)
    tokens: tuple[tuple[TokenType, int], ...] = (("prompt", prompt_tokens), ("completion", completion_tokens))
    for token_type, count in tokens:
        if count > 0:
            LLM_TOKENS.labels(model=model, tenant=tenant, kind=kind, type=token_type).inc(count)
    if cost_usd:
        LLM_COST.labels(model=model, tenant=tenant, kind=kind).inc(cost_usd)


def webhook_attempt(*, ok: bool, final: bool, duration_s: float) -> None:
    WEBHOOK_ATTEMPTS.labels(result="ok" if ok else "error").inc()
    WEBHOOK_LATENCY.observe(duration_s)
    if final:
        WEBHOOK_DELIVERIES.labels(outcome="delivered" if ok else "failed").inc()

"""What jobs/queue.py relies on in arq: fails loudly when an arq upgrade changes it.

Each check names the use it protects. If one fails after an upgrade, read the
new arq, then change ``jobs/queue.py`` (and only it) before changing this test.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import arq
from arq.constants import in_progress_key_prefix, job_key_prefix

from jobs import queue


async def _noop(ctx: dict[str, object], task_id: str) -> None:
    return None


class TestArqContract:
    def test_the_pinned_version(self) -> None:
        # pyproject pins arq exactly: an upgrade is a decision that re-runs this file.
        assert version("arq") == "0.28.0"

    def test_job_and_in_progress_keys(self) -> None:
        """``make_runnable`` deletes the in-progress marker and checks the job key by these prefixes."""
        assert job_key_prefix == "arq:job:"
        assert in_progress_key_prefix == "arq:in-progress:"

    def test_worker_takes_the_options_we_pass(self) -> None:
        params = set(inspect.signature(arq.Worker).parameters)
        used = {
            "functions", "queue_name", "redis_pool", "burst", "handle_signals", "max_jobs", "poll_delay",
            "queue_read_limit", "keep_result", "ctx", "job_serializer", "job_deserializer", "log_results",
        }  # fmt: skip
        assert used <= params, used - params
        assert {"timeout", "max_tries", "name"} <= set(inspect.signature(arq.func).parameters)

    async def test_worker_attributes_we_drive(self) -> None:
        """Draining sets ``allow_pick_jobs``; stopping cancels ``tasks`` and ``main_task``; ``finish`` reads more."""
        pool = queue.QueueRedis.from_url("redis://127.0.0.1:1")  # never connected
        worker = queue.make_worker(
            pool, "research", _noop, ctx={}, max_jobs=2, poll_delay_s=0.5, job_timeout_s=60, burst=True
        )
        assert worker.allow_pick_jobs is True
        assert worker.tasks == {}
        assert worker.main_task is None
        assert worker.health_check_key == queue.queue_key("research") + ":health-check"
        assert worker.pool is pool  # the process's shared pool, not one per worker
        assert worker.functions[queue.JOB_FUNCTION].max_tries == 10_000
        queue.stop_picking([worker])
        assert worker.allow_pick_jobs is False
        queue.cancel_running([worker])  # nothing running: a no-op
        await pool.aclose()

    def test_retry_is_arqs(self) -> None:
        assert queue.RetryLater is arq.Retry
        assert queue.RetryLater(defer=1.5).defer_score == 1500

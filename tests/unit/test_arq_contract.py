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

    def test_the_worker_loop_push_worker_replaces(self) -> None:
        """``PushWorker.main`` is arq's ``Worker.main`` with its polling loop replaced by a wait for a wake-up:
        the rest of arq's ``main`` (ctx, on_startup, the burst exit) must still be what it copies."""
        main = inspect.getsource(arq.Worker.main)
        assert "async for _ in poll(self.poll_delay_s):" in main
        assert "await self._poll_iteration()" in main
        assert "self.ctx['redis'] = self.pool" in main
        assert "await self.on_startup(self.ctx)" in main
        assert "0 <= self.max_burst_jobs <= self._jobs_started()" in main
        assert "await self.pool.zcard(self.queue_name)" in main
        # the pool is created only when none is given: make_worker always gives one
        assert "if self._pool is None:" in main

    def test_a_finished_job_frees_its_slot_through_the_method_push_worker_extends(self) -> None:
        """A job's end wakes ``PushWorker`` through ``_release_sem_dec_counter_on_complete``."""
        assert "self._release_sem_dec_counter_on_complete()" in inspect.getsource(arq.Worker.start_jobs)
        assert "self.sem.release()" in inspect.getsource(arq.Worker._release_sem_dec_counter_on_complete)

    def test_a_retried_job_is_due_at_now_plus_defer(self) -> None:
        """``PushWorker`` wakes for a job it deferred at (now + defer): how arq re-scores a ``Retry``."""
        run_job = inspect.getsource(arq.Worker.run_job)
        assert "incr_score = e.defer_score + (timestamp_ms() - score)" in run_job
        assert "tr.zincrby(self.queue_name, incr_score, job_id)" in inspect.getsource(arq.Worker.finish_job)

    async def test_make_worker_builds_a_push_worker_on_a_wake_channel(self) -> None:
        pool = queue.QueueRedis.from_url("redis://127.0.0.1:1")  # never connected
        worker = queue.make_worker(
            pool, "research", _noop, ctx={}, max_jobs=2, poll_delay_s=0.5, job_timeout_s=60, burst=True
        )
        assert isinstance(worker, queue.PushWorker)
        assert isinstance(worker, arq.Worker)
        assert queue.wake_channel(worker.queue_name) == "agentfarm:queue:research:wake"
        await pool.aclose()

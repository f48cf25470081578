"""Task state: the one set of status transitions and progress rules."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from jobs.models import TERMINAL, TRANSITIONS, InvalidTransition, Status, Task, TaskError, utcnow


def make_task(status: Status = "queued", progress: int = 0) -> Task:
    now = utcnow()
    return Task(
        id="t1",
        kind="research",
        tenant="acme",
        status=status,
        progress=progress,
        params={"topic": "x"},
        created_at=now,
        updated_at=now,
    )


ALL: list[Status] = ["queued", "running", "retrying", "completed", "failed", "cancelled"]


class TestTransitions:
    @pytest.mark.parametrize(("before", "after"), list(itertools.product(ALL, ALL)))
    def test_only_listed_transitions_are_allowed(self, before: Status, after: Status) -> None:
        """A status moves only along the documented lifecycle; anything else raises."""
        task = make_task(before)
        if after in TRANSITIONS[before]:
            assert task.to(after).status == after
        else:
            with pytest.raises(InvalidTransition):
                task.to(after)

    def test_finished_tasks_never_move(self) -> None:
        """Completed, failed and cancelled are final."""
        assert all(not TRANSITIONS[s] for s in TERMINAL)

    def test_finishing_stamps_finished_at(self) -> None:
        """Every terminal transition records when the task finished."""
        running = make_task("running")
        for status in TERMINAL:
            assert running.to(status).finished_at is not None
        assert running.to("retrying").finished_at is None

    def test_completion_sets_full_progress(self) -> None:
        """A completed task reads 100 %."""
        assert make_task("running", progress=40).to("completed").progress == 100

    def test_failure_keeps_its_error(self) -> None:
        """A failed task carries the error it failed with."""
        failed = make_task("running").to("failed", error=TaskError(type="timeout", message="too slow"))
        assert failed.error == TaskError(type="timeout", message="too slow")


class TestProgress:
    def test_progress_never_goes_down(self) -> None:
        """A lower progress report (a late write) does not move progress back."""
        task = make_task("running").with_progress(60, "writing")
        assert task.with_progress(30, "late").progress == 60

    def test_progress_stays_below_100_until_completed(self) -> None:
        """Only completion reaches 100 %; a running crew tops out at 99."""
        assert make_task("running").with_progress(150, "x").progress == 99

    @pytest.mark.parametrize("status", ["queued", "completed", "failed", "cancelled"])
    def test_progress_is_ignored_unless_running(self, status: Status) -> None:
        """A progress report for a task that is not running changes nothing."""
        task = make_task(status)
        assert task.with_progress(50, "x") is task


class TestEncoding:
    def test_round_trips_through_json_with_utc_timestamps(self) -> None:
        """Stored state decodes to the same struct, with RFC 3339 UTC times."""
        task = make_task("running")
        raw = msgspec.json.encode(task)
        assert msgspec.json.decode(raw, type=Task) == task
        assert msgspec.json.decode(raw)["created_at"].endswith("Z")

    def test_old_records_without_new_fields_still_decode(self) -> None:
        """A record written before optional fields existed decodes with their defaults (rolling upgrades)."""
        now = utcnow().isoformat()
        old = {"id": "t", "kind": "swot", "tenant": "a", "params": {}, "created_at": now, "updated_at": now}
        task = msgspec.convert(old, Task)
        assert task.status == "queued" and task.usage.llm_calls == 0 and task.trace_id is None

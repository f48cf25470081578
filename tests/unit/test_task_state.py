"""Task state: the one set of status transitions and progress rules."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from crews.results import Usage
from jobs.models import (
    TERMINAL,
    TRANSITIONS,
    USAGE_WRITABLE,
    AlreadyFinished,
    InvalidTransition,
    Reason,
    Status,
    Task,
    TaskError,
    utcnow,
)


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
REASONS: list[Reason] = list(get_args(Reason))
ROOT = Path(__file__).resolve().parents[2]


def started(task: Task, token: int = 1) -> Task:
    return task.started(run_token=token, worker_id="w", job_id="j")


class TestTransitions:
    def test_a_task_lives_through_retry_recovery_hand_back_and_completion(self) -> None:
        """The moves a worker makes, in order, each recorded with its reason."""
        task = make_task()
        steps = [
            (lambda t: started(t, 1), "running", "started"),
            (lambda t: t.to("retrying", "retry_scheduled"), "retrying", "retry_scheduled"),
            (lambda t: started(t, 2), "running", "started"),
            (lambda t: t.to("queued", "lease_lapsed"), "queued", "lease_lapsed"),
            (lambda t: started(t, 3), "running", "started"),
            (lambda t: started(t, 4), "running", "taken_over"),  # still marked running: taken over in place
            (lambda t: t.to("queued", "worker_shutdown"), "queued", "worker_shutdown"),
            (lambda t: started(t, 5), "running", "started"),
            (lambda t: t.to("completed", "completed"), "completed", "completed"),
        ]
        for step, status, reason in steps:
            task = step(task)
            assert (task.status, task.reason) == (status, reason)
        assert task.attempt == 5 and task.run_token == 5 and task.progress == 100 and task.finished_at is not None

    def test_a_dead_lettered_task_is_requeued_through_the_same_table(self) -> None:
        failed = started(make_task()).to("failed", "error", error=TaskError(type="auth", message="bad key"))
        again = failed.requeued("job-2")
        assert (again.status, again.reason, again.attempt, again.error, again.finished_at) == (
            "queued",
            "operator_requeue",
            0,
            None,
            None,
        )
        with pytest.raises(InvalidTransition):
            make_task("completed").requeued("job-3")  # only a failed task gets a second chance

    @pytest.mark.parametrize("status", ALL)
    def test_cancel_ends_every_live_task_and_never_a_finished_one(self, status: Status) -> None:
        task = make_task(status)
        if status in TERMINAL:
            with pytest.raises(AlreadyFinished):
                task.cancelled()
        else:
            assert (task.cancelled().status, task.cancelled().reason) == ("cancelled", "cancelled")

    @pytest.mark.parametrize(("before", "after"), list(itertools.product(ALL, ALL)))
    def test_a_move_for_a_reason_the_table_does_not_give_raises(self, before: Status, after: Status) -> None:
        """The table is the whole lifecycle: any other (status, reason) pair is refused."""
        allowed = TRANSITIONS.get((before, after), frozenset())
        for reason in REASONS:
            if reason in allowed:
                assert make_task(before).to(after, reason).status == after
            else:
                with pytest.raises(InvalidTransition):
                    make_task(before).to(after, reason)

    def test_finished_tasks_never_move_except_an_operators_requeue(self) -> None:
        moves = {(a, b) for (a, b) in TRANSITIONS if a in TERMINAL}
        assert moves == {("failed", "queued")}
        assert TRANSITIONS[("failed", "queued")] == {"operator_requeue"}

    def test_every_reason_is_used_and_status_is_changed_only_by_task_to(self) -> None:
        """No code sets ``status=`` itself; every reason code is given somewhere."""
        used: set[str] = set()
        for path in [*ROOT.joinpath("jobs").rglob("*.py"), *ROOT.joinpath("service").rglob("*.py")]:
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                if isinstance(node.func, ast.Attribute) and node.func.attr == "to" and len(node.args) == 2:
                    reason = node.args[1]
                    if isinstance(reason, ast.Constant):
                        used.add(str(reason.value))
                keywords = {k.arg for k in node.keywords}
                if "status" in keywords and path.name != "models.py":
                    name = ast.unparse(node.func)
                    assert "replace" not in name, f"{path.relative_to(ROOT)}:{node.lineno} sets status directly"
        used |= {"submitted", "started", "taken_over", "cancelled", "operator_requeue"}  # set in jobs/models.py
        used |= {"error", "timeout", "budget_exceeded"}  # passed through a variable by settle._fail
        used |= {"enqueue_failed"}  # historic: only read from tasks stored before submit became one MULTI
        assert used >= set(REASONS), set(REASONS) - used

    def test_finishing_stamps_finished_at(self) -> None:
        """Every terminal transition records when the task finished."""
        running = make_task("running")
        assert running.to("completed", "completed").finished_at is not None
        assert running.to("failed", "timeout").finished_at is not None
        assert running.cancelled().finished_at is not None
        assert running.to("retrying", "retry_scheduled").finished_at is None

    def test_completion_sets_full_progress(self) -> None:
        """A completed task reads 100 %."""
        assert make_task("running", progress=40).to("completed", "completed").progress == 100

    def test_failure_keeps_its_error(self) -> None:
        """A failed task carries the error it failed with."""
        failed = make_task("running").to("failed", "timeout", error=TaskError(type="timeout", message="too slow"))
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


def usage(calls: int, tokens: int = 10) -> Usage:
    return Usage(llm_calls=calls, prompt_tokens=tokens, completion_tokens=tokens // 2, model="openai/m")


class TestUsage:
    @pytest.mark.parametrize("status", sorted(USAGE_WRITABLE))
    def test_the_execution_that_ran_the_task_records_usage_also_after_a_stop(self, status: Status) -> None:
        """Running, cancelled or failed: the execution holding the token still records the calls it completed."""
        task = msgspec.structs.replace(make_task(status), run_token=7)
        after = task.with_usage(usage(3), run_token=7)
        assert after.usage == usage(3) and after.status == status

    def test_usage_of_another_execution_or_onto_a_completed_task_is_ignored(self) -> None:
        """A superseded execution never writes, and a completed task's usage is the one it completed with."""
        running = msgspec.structs.replace(make_task("running"), run_token=7)
        assert running.with_usage(usage(3), run_token=6) is running
        completed = msgspec.structs.replace(make_task("completed"), run_token=7)
        assert completed.with_usage(usage(3), run_token=7) is completed
        requeued = msgspec.structs.replace(make_task("queued"), run_token=7)  # handed back
        assert requeued.with_usage(usage(3), run_token=7) is requeued

    def test_usage_never_goes_back(self) -> None:
        """An older snapshot arriving late does not overwrite a newer one."""
        task = msgspec.structs.replace(make_task("cancelled"), run_token=7).with_usage(usage(3), run_token=7)
        assert task.with_usage(usage(2, 50), run_token=7) is task
        assert task.with_usage(usage(3), run_token=7) is task
        assert task.with_usage(usage(3, 20), run_token=7).usage == usage(3, 20)

    def test_a_new_execution_starts_with_its_own_usage(self) -> None:
        """Usage is the current run's: a retried task does not show the previous attempt's calls as its own."""
        retrying = msgspec.structs.replace(make_task("retrying"), usage=usage(2))
        assert retrying.started(run_token=8, worker_id="w", job_id="j").usage == Usage()


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

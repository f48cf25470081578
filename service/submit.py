"""Taking a new task: rate limit, idempotency, state, queue — in that order, all or nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec
import structlog

from crews import netguard
from crews.params import Params
from jobs import idempotency, metrics
from jobs.models import Task, utcnow
from jobs.queue import QueueRedis, enqueue_new_in
from jobs.ratelimit import RateLimiter
from jobs.settings import Settings
from jobs.store import TaskStore
from jobs.telemetry import current_trace_id, inject_traceparent
from service.auth import Caller
from service.errors import Conflict, InvalidInput, RateLimited, Unprocessable
from service.schemas import FieldProblem

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    task: Task
    replayed: bool  # an earlier request with the same Idempotency-Key created it


class Submitter:
    """Everything ``POST /v1/tasks/{kind}`` does once the body is valid."""

    def __init__(self, settings: Settings, store: TaskStore, queue: QueueRedis, limiter: RateLimiter) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.limiter = limiter

    async def submit(self, kind: str, params: Params, caller: Caller, idempotency_key: str | None) -> Submitted:
        task_id = str(uuid.uuid4())
        if idempotency_key is not None:
            replay = await self._claim(kind, params, caller, idempotency_key, task_id)
            if replay is not None:
                return Submitted(replay, replayed=True)
        try:
            await self._check_webhook(params, caller)
            self._check_budget(kind, params)
            await self._check_rate(kind, caller)
            task = await self._create(kind, params, caller, task_id)
        except BaseException:
            if idempotency_key is not None:
                await idempotency.release(self.queue, caller.tenant, idempotency_key)
            raise
        log.info("task_submitted", task_id=task.id, kind=kind, tenant=caller.tenant)
        return Submitted(task, replayed=False)

    async def _claim(self, kind: str, params: Params, caller: Caller, key: str, task_id: str) -> Task | None:
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise InvalidInput("Idempotency-Key: must be 1-255 printable characters")
        fingerprint = idempotency.fingerprint(kind, params)
        claim = idempotency.Claim(fingerprint=fingerprint, task_id=task_id)
        existing = await idempotency.claim(self.queue, caller.tenant, key, claim, self.settings.task_ttl_s)
        if existing is None:
            return None
        if existing.fingerprint != fingerprint:
            raise Unprocessable(
                "Idempotency-Key was already used with a different request; use a new key for a new task"
            )
        task = await self.store.get_for(existing.task_id, caller.tenant)
        if task is None:
            raise Conflict("a request with this Idempotency-Key is still being processed; retry in a moment")
        return task

    async def _check_webhook(self, params: Params, caller: Caller) -> None:
        """A webhook needs the tenant's signing secret and a public address (checked again at delivery)."""
        if params.webhook_url is None:
            return
        config = self.settings.webhook
        if config.secret_of(caller.tenant) is None:
            message = "this tenant has no webhook secret (AGENTFARM_WEBHOOK_SECRETS), so deliveries cannot be signed"
            raise Unprocessable(f"webhook_url: {message}", errors=[_webhook_problem(message)])
        try:
            await netguard.check(params.webhook_url, allow_private=config.allow_private)
        except netguard.Refused as refused:
            message = f"not a public http(s) address: {refused.reason}"
            raise Unprocessable(f"webhook_url: {message}", errors=[_webhook_problem(message)]) from None

    def _check_budget(self, kind: str, params: Params) -> None:
        limit = self.settings.policy(kind).max_tokens_limit
        if params.max_tokens is not None and limit and params.max_tokens > limit:
            message = f"at most {limit} for {kind} tasks (AGENTFARM_{kind.upper()}_MAX_TOKENS_LIMIT)"
            problem = FieldProblem(field="max_tokens", message=message, source="body")
            raise Unprocessable(f"max_tokens: {message}", errors=[problem])

    async def _check_rate(self, kind: str, caller: Caller) -> None:
        limit = caller.rate_limit or self.settings.policy(kind).rate_limit
        decision = await self.limiter.hit(f"submit:{caller.tenant}:{kind}", limit)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit for {kind} tasks is {limit} per API key; retry in {decision.retry_after_header} s",
                headers={"Retry-After": decision.retry_after_header},
            )

    async def _create(self, kind: str, params: Params, caller: Caller, task_id: str) -> Task:
        now = utcnow()
        task = Task(
            id=task_id,
            kind=kind,
            tenant=caller.tenant,
            # What the crew works on and the options asked for; the webhook address lives on the task.
            params={
                k: v
                for k, v in msgspec.structs.asdict(params).items()
                if k != "webhook_url" and not (k in params.option_fields and v is None)
            },
            webhook_url=params.webhook_url,
            max_tokens=params.max_tokens or self.settings.policy(kind).token_budget,
            max_attempts=self.settings.policy(kind).max_attempts,
            created_at=now,
            updated_at=now,
            job_id=task_id,
            trace_id=current_trace_id(),
            traceparent=inject_traceparent(),
        )
        # The task, its first event and its job in one MULTI: never a task that claims to be queued but is not.
        await self.store.create(task, also=lambda pipe: enqueue_new_in(pipe, task))
        metrics.TASKS_SUBMITTED.labels(kind=kind).inc()
        return task


def _webhook_problem(message: str) -> FieldProblem:
    return FieldProblem(field="webhook_url", message=message, source="body")

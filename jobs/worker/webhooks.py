"""Sending one webhook delivery: check the address again, sign, POST, record the attempt, retry later."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import msgspec
import structlog
from standardwebhooks.webhooks import Webhook

from crews import netguard
from jobs import metrics, webhooks
from jobs.models import utcnow
from jobs.queue import RetryLater
from jobs.settings import WebhookConfig
from jobs.worker.runtime import WorkerRuntime

log = structlog.get_logger(__name__)

USER_AGENT = "agentfarm-webhooks/1"


def backoff_s(config: WebhookConfig, attempt: int) -> float:
    """Exponential with jitter after attempt ``attempt`` (1-based), at most an hour."""
    ceiling = min(3600.0, config.backoff_s * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def signed_headers(secret: str, delivery_id: str, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``."""
    now = utcnow()
    signature = Webhook(secret).sign(delivery_id, now, body.decode())
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


async def _post(config: WebhookConfig, url: str, headers: dict[str, str], body: bytes) -> tuple[int | None, str | None]:
    """(status code, None) for an answer, (None, error) when there was none; no redirect is followed."""
    try:
        target = await netguard.check(url, allow_private=config.allow_private)
    except netguard.Refused as refused:
        return None, f"refused: {refused.reason}"
    try:
        async with httpx.AsyncClient(timeout=config.timeout_s, trust_env=False) as client:
            response = await netguard.send(client, "POST", target, headers=headers, content=body)
    except httpx.TimeoutException:
        return None, f"timed out after {config.timeout_s:g} s"
    except httpx.HTTPError as exc:
        return None, f"{exc.__class__.__name__}: {exc}"[:300]
    return response.status_code, None


async def deliver_webhook(ctx: dict[str, Any], task_id: str, delivery_id: str) -> None:
    """The arq job: one attempt at delivering ``delivery_id``; raises ``RetryLater`` while attempts remain."""
    runtime: WorkerRuntime = ctx["runtime"]
    config = runtime.settings.webhook
    stored = await webhooks.load(runtime.redis, task_id, delivery_id)
    if stored is None or stored.delivery.state != "pending":
        return  # expired with its task, or already settled (a duplicate run)
    task = await runtime.store.get(task_id)
    secret = config.secret_of(task.tenant) if task is not None else None
    delivery = stored.delivery
    number = len(delivery.attempts) + 1
    began = time.monotonic()
    status: int | None
    error: str | None
    if secret is None:
        status, error = None, "refused: the tenant has no webhook secret any more"
    else:
        status, error = await _post(config, delivery.url, signed_headers(secret, delivery_id, stored.body), stored.body)
    duration_ms = round((time.monotonic() - began) * 1000, 1)
    attempt = webhooks.Attempt(attempt=number, at=utcnow(), duration_ms=duration_ms, status_code=status, error=error)
    ok = status is not None and 200 <= status < 300
    final = ok or number >= config.max_attempts or (error or "").startswith("refused")
    state: webhooks.DeliveryState = "delivered" if ok else "failed" if final else "pending"
    delivery = msgspec.structs.replace(delivery, attempts=[*delivery.attempts, attempt], state=state)
    await webhooks.save(runtime.redis, task_id, msgspec.structs.replace(stored, delivery=delivery))
    metrics.webhook_attempt(ok=ok, final=final, duration_s=duration_ms / 1000)
    fields = {"task_id": task_id, "webhook_id": delivery_id, "attempt": number, "status_code": status}
    if ok:
        log.info("webhook_delivered", **fields, duration_ms=duration_ms)
    elif final:
        log.warning("webhook_failed", **fields, error=error, attempts=number)
    else:
        delay = backoff_s(config, number)
        log.info("webhook_retrying", **fields, error=error, retry_in_s=round(delay, 2))
        raise RetryLater(defer=delay)

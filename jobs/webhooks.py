"""Webhooks: when a task with a ``webhook_url`` ends, its view is POSTed there, signed, until delivered.

A delivery is scheduled by ``TaskStore.update`` in the same MULTI as the
terminal state: its record (``pending``, with the body to send) and a durable
arq job on the task's queue. Workers deliver it (``jobs/worker/webhooks.py``),
retrying with exponential backoff up to ``webhook.max_attempts``; a worker
restart between attempts changes nothing, the job waits in Redis. Every
attempt is recorded and served at ``GET /v1/tasks/{id}/webhooks``. Delivery
never delays or changes the task.

Signing follows Standard Webhooks (the ``standardwebhooks`` package):
``webhook-id`` (unique per event, the same on every retry), ``webhook-timestamp``
and ``webhook-signature: v1,<base64 HMAC-SHA256>``, keyed by the tenant's secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from jobs.kinds import KINDS
from jobs.models import Status, Task, utcnow
from jobs.queue import WEBHOOK_FUNCTION, enqueue_in
from jobs.views import TaskView

DeliveryState = Literal["pending", "delivered", "failed"]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One POST: when, how long, and the answer (a status code) or the error."""

    attempt: int
    at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event's delivery to the task's webhook URL."""

    webhook_id: str
    url: str
    event: Status
    state: DeliveryState = "pending"
    created_at: datetime
    attempts: list[Attempt] = msgspec.field(default_factory=list)


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    delivery: Delivery
    body: bytes  # the exact bytes signed and sent, the same on every retry


_stored = msgspec.json.Decoder(Stored)
_encoder = msgspec.json.Encoder()


def log_key(task_id: str) -> str:
    """Hash of the task's deliveries: webhook id -> ``Stored``."""
    return f"agentfarm:webhooks:{task_id}"


def webhook_id(task: Task) -> str:
    """Unique per event: a re-queued task that ends again is a new event."""
    return f"msg_{task.id.replace('-', '')}_{task.seq}"


def schedule(pipe: Pipeline, task: Task, ttl_s: int) -> None:
    """In the MULTI that finishes ``task``: record its delivery and queue the job that sends it."""
    assert task.webhook_url is not None
    assert task.finished
    delivery = Delivery(webhook_id=webhook_id(task), url=task.webhook_url, event=task.status, created_at=utcnow())
    body = _encoder.encode({"type": f"task.{task.status}", "data": TaskView.of(task)})
    pipe.hset(log_key(task.id), delivery.webhook_id, _encoder.encode(Stored(delivery=delivery, body=body)).decode())
    pipe.expire(log_key(task.id), ttl_s)
    enqueue_in(
        pipe,
        WEBHOOK_FUNCTION,
        (task.id, delivery.webhook_id),
        job_id=f"{delivery.webhook_id}",
        queue=KINDS[task.kind].queue,
        ttl_s=ttl_s,
    )


async def load(redis: Redis, task_id: str, delivery_id: str) -> Stored | None:
    raw = await redis.hget(log_key(task_id), delivery_id)  # type: ignore[misc]
    return None if raw is None else _stored.decode(raw)


async def save(redis: Redis, task_id: str, stored: Stored) -> None:
    """Write a delivery's record back (only its worker does, one attempt at a time)."""
    await redis.hset(log_key(task_id), stored.delivery.webhook_id, _encoder.encode(stored).decode())  # type: ignore[misc]


async def deliveries(redis: Redis, task_id: str) -> list[Delivery]:
    """The task's deliveries, oldest first."""
    raws = await redis.hvals(log_key(task_id))  # type: ignore[misc]
    found = [_stored.decode(raw).delivery for raw in raws]
    return sorted(found, key=lambda d: d.created_at)

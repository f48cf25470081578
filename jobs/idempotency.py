"""Idempotency keys: the same key and body from the same tenant give back the same task."""

from __future__ import annotations

import hashlib

import msgspec
from redis.asyncio import Redis


class Claim(msgspec.Struct, frozen=True):
    """What an idempotency key was first used for."""

    fingerprint: str
    task_id: str


def fingerprint(kind: str, params: msgspec.Struct) -> str:
    """A digest of what was asked: the kind and the decoded body (field order and defaults normalised)."""
    return hashlib.sha256(kind.encode() + b"\0" + msgspec.json.encode(params, order="sorted")).hexdigest()


def _key(tenant: str, key: str) -> str:
    return f"agentfarm:idempotency:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


async def claim(redis: Redis, tenant: str, key: str, claim: Claim, ttl_s: int) -> Claim | None:
    """Record ``claim`` for the key unless one exists; returns the existing claim, if any."""
    if await redis.set(_key(tenant, key), msgspec.json.encode(claim), nx=True, ex=ttl_s):
        return None
    raw = await redis.get(_key(tenant, key))
    return None if raw is None else msgspec.json.decode(raw, type=Claim)


async def release(redis: Redis, tenant: str, key: str) -> None:
    await redis.delete(_key(tenant, key))

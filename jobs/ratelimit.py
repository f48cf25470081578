"""Rate limits shared by every process: GCRA in one Redis script.

The generic cell rate algorithm keeps one timestamp per key (the "theoretical
arrival time"), so a check is one atomic script call on the Redis clock: API
replicas and workers on different machines agree without coordinating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from jobs.settings import RateLimit

# KEYS[1]: the limit's key. ARGV: emission interval (ms per request), burst (requests).
# Returns {allowed (0|1), ms to wait until the next request would be allowed}.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return {0, wait} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, as ``Retry-After`` wants them."""
        return str(max(1, math.ceil(self.retry_after_s)))


def _args(limit: RateLimit, burst: int | None) -> tuple[int, int]:
    interval_ms = max(1, round(limit.period_s * 1000 / limit.count))
    return interval_ms, burst or limit.count


class RateLimiter:
    """Async limiter for the API: ``count`` requests per ``period_s``, bursts up to ``count``."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_GCRA)

    async def hit(self, key: str, limit: RateLimit, burst: int | None = None) -> Decision:
        """Count one request against ``limit`` (bursts of up to ``burst``, default the whole count)."""
        allowed, wait_ms = await self._script(keys=[f"agentfarm:rate:{key}"], args=_args(limit, burst))
        return Decision(bool(allowed), int(wait_ms) / 1000)


class SyncRateLimiter:
    """The same limiter for crew threads (the outbound LLM limit)."""

    def __init__(self, redis: SyncRedis) -> None:
        self._script = redis.register_script(_GCRA)

    def hit(self, key: str, limit: RateLimit, burst: int | None = None) -> Decision:
        allowed, wait_ms = self._script(keys=[f"agentfarm:rate:{key}"], args=_args(limit, burst))
        return Decision(bool(allowed), int(wait_ms) / 1000)

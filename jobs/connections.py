"""Every Redis client of the service is built here: the API's, the workers', the CLI's.

One place decides how to reach Redis — a URL (``redis://``, ``rediss://`` with
TLS and an ACL user, ``unix://``) or a Sentinel group that names the current
master — so a failover, a password or TLS is handled the same way everywhere.

Clients connect on first use, not when built: the API starts while Redis is
down (readiness says 503) and serves once it is back.
"""

from __future__ import annotations

from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel as SyncSentinel
from redis.sentinel import SentinelManagedConnection as SyncSentinelManagedConnection

from jobs.queue import QueueRedis, deserialize, serialize
from jobs.settings import RedisConfig

# A connection attempt gives up after this long, so a request while Redis is down gets a quick 503.
CONNECT_TIMEOUT_S = 2.0
# A command retried through a dropped connection or a failover (the new master is found again).
_RETRIES = 3


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), _RETRIES)


def _demoted(exc: ResponseError) -> bool:
    """A master that lost its replica refuses writes (``min-replicas-to-write``): during a failover
    that is the old master, which Sentinel reconfigures seconds later. Like redis-py's own handling
    of READONLY, the connection is dropped and the command retried, so the master is looked up again
    through the sentinels; if it still fails, the caller sees a connection error (the API's 503)."""
    return str(exc).startswith("NOREPLICAS")


class _MasterConnection(SentinelManagedConnection):
    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not _demoted(exc):
                raise
            await self.disconnect()
            raise RedisConnectionError(f"the master refused a write during a failover: {exc}") from exc


class _SyncMasterConnection(SyncSentinelManagedConnection):
    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not _demoted(exc):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise RedisConnectionError(f"the master refused a write during a failover: {exc}") from exc


def _sentinel_addresses(config: RedisConfig) -> list[tuple[str, int]]:
    addresses = []
    for item in config.sentinels:
        host, _, port = item.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _sentinel_kwargs(config: RedisConfig) -> dict[str, Any]:
    """How to talk to the sentinels themselves (they may have their own password)."""
    kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": CONNECT_TIMEOUT_S}
    if config.sentinel_password:
        kwargs["password"] = config.sentinel_password
    return kwargs


def redis_client(config: RedisConfig, *, socket_timeout: float | None = None) -> QueueRedis:
    """The asyncio client for the queue and the task store (arq's ``ArqRedis``, a ``redis.asyncio.Redis``)."""
    common: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": socket_timeout,
        "retry": _retry(),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    pool: ConnectionPool
    if config.sentinels:
        sentinel = Sentinel(_sentinel_addresses(config), sentinel_kwargs=_sentinel_kwargs(config))  # type: ignore[no-untyped-call]
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            config.sentinel_master,
            sentinel,
            is_master=True,
            db=config.sentinel_db,
            username=config.sentinel_master_username or None,
            password=config.sentinel_master_password or None,
            connection_class=_MasterConnection,
            **common,
        )
    else:
        pool = ConnectionPool.from_url(config.url, **common)
    return QueueRedis(pool, job_serializer=serialize, job_deserializer=deserialize)


def sync_redis_client(config: RedisConfig, *, timeout_s: float) -> SyncRedis:
    """A blocking client for crew threads (stop points, the LLM rate limit); same Redis, same rules."""
    if config.sentinels:
        sentinel = SyncSentinel(_sentinel_addresses(config), sentinel_kwargs=_sentinel_kwargs(config))  # type: ignore[no-untyped-call]
        master: SyncRedis = sentinel.master_for(  # type: ignore[no-untyped-call]
            config.sentinel_master,
            db=config.sentinel_db,
            username=config.sentinel_master_username or None,
            password=config.sentinel_master_password or None,
            connection_class=_SyncMasterConnection,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        return master
    return SyncRedis.from_url(config.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def describe(config: RedisConfig) -> str:
    """Where Redis is, for an error message (never the password)."""
    if config.sentinels:
        return f"the master {config.sentinel_master!r} of sentinels {', '.join(config.sentinels)}"
    pool = ConnectionPool.from_url(config.url)
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}"

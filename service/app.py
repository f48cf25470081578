"""Builds the Litestar application from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from arq.connections import ArqRedis, RedisSettings, create_pool
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide

from jobs.queue import deserialize, serialize
from jobs.ratelimit import RateLimiter
from jobs.settings import Settings
from jobs.store import TaskStore
from service.access_log import access_log
from service.admin import AdminController
from service.auth import bearer_auth
from service.errors import to_problem
from service.health import HealthController
from service.observability import MetricsController, request_metrics, tracing_plugin
from service.openapi import StrictStructSchemaPlugin, openapi_config
from service.submit import Submitter
from service.tasks import TaskController


def app_version() -> str:
    try:
        return version("agentfarm")
    except PackageNotFoundError:
        return "0.0.0+local"


def create_app(settings: Settings) -> Litestar:
    """The API, configured by ``settings``; Redis is connected at start-up."""

    @asynccontextmanager
    async def redis_lifespan(app: Litestar) -> AsyncIterator[None]:
        # arq's pool is a redis.asyncio client: it serves the queue and the task store.
        pool = await create_pool(
            RedisSettings.from_dsn(settings.redis_url),
            job_serializer=serialize,
            job_deserializer=deserialize,
            retry=0,
        )
        app.state.queue = pool
        app.state.store = TaskStore(pool, settings.task_ttl_s)
        app.state.submitter = Submitter(settings, app.state.store, pool, RateLimiter(pool))
        try:
            yield
        finally:
            await pool.aclose()

    def provide_store(state: State) -> TaskStore:
        store: TaskStore = state.store
        return store

    def provide_submitter(state: State) -> Submitter:
        submitter: Submitter = state.submitter
        return submitter

    def provide_queue(state: State) -> ArqRedis:
        queue: ArqRedis = state.queue
        return queue

    return Litestar(
        route_handlers=[TaskController, AdminController, HealthController, MetricsController],
        state=State({"settings": settings}),
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "store": Provide(provide_store, sync_to_thread=False),
            "queue": Provide(provide_queue, sync_to_thread=False),
            "tasks": Provide(provide_submitter, sync_to_thread=False),
        },
        lifespan=[redis_lifespan],
        middleware=[access_log, request_metrics().middleware, bearer_auth(settings.api_keys)],
        exception_handlers={Exception: to_problem},
        openapi_config=openapi_config(app_version()),
        plugins=[StrictStructSchemaPlugin(), tracing_plugin()],
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None,
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,  # logging is configured once, by service.logs
    )

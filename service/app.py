"""Builds the Litestar application from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide

from jobs.connections import redis_client
from jobs.queue import QueueRedis
from jobs.ratelimit import RateLimiter
from jobs.settings import Settings
from jobs.store import TaskStore
from service.admin import AdminController
from service.auth import bearer_auth
from service.errors import to_problem
from service.events import EventsController
from service.health import HealthController
from service.observability import MetricsController, tracing_plugin
from service.openapi import StrictStructSchemaPlugin, docs_assets, openapi_config
from service.submit import Submitter
from service.tasks import TaskController, submit_routes
from service.validation import ApiRequest
from service.web import security_headers, web_routes
from service.webhooks import WebhooksController


def app_version() -> str:
    try:
        return version("agentfarm")
    except PackageNotFoundError:
        return "0.0.0+local"


def create_app(settings: Settings) -> Litestar:
    """The API, configured by ``settings``; Redis is connected on first use, so it may start while Redis is down."""

    @asynccontextmanager
    async def redis_lifespan(app: Litestar) -> AsyncIterator[None]:
        # arq's client is a redis.asyncio client: it serves the queue and the task store.
        pool = redis_client(settings.redis)
        app.state.queue = pool
        app.state.store = TaskStore(pool, settings.task_ttl_s)
        app.state.submitter = Submitter(settings, app.state.store, pool, RateLimiter(pool))
        try:
            yield
        finally:
            await pool.aclose()
            await pool.connection_pool.disconnect()  # the client does not close a pool it was given

    def provide_store(state: State) -> TaskStore:
        store: TaskStore = state.store
        return store

    def provide_submitter(state: State) -> Submitter:
        submitter: Submitter = state.submitter
        return submitter

    def provide_queue(state: State) -> QueueRedis:
        queue: QueueRedis = state.queue
        return queue

    return Litestar(
        route_handlers=[
            *submit_routes(),
            TaskController,
            EventsController,
            WebhooksController,
            AdminController,
            HealthController,
            MetricsController,
            docs_assets(),
            web_routes(),
        ],
        state=State({"settings": settings}),
        dependencies={
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "store": Provide(provide_store, sync_to_thread=False),
            "queue": Provide(provide_queue, sync_to_thread=False),
            "tasks": Provide(provide_submitter, sync_to_thread=False),
        },
        lifespan=[redis_lifespan],
        middleware=[bearer_auth(settings.api.api_keys)],  # metrics and the access log: tracing_plugin, app-wide
        exception_handlers={Exception: to_problem},
        openapi_config=openapi_config(app_version()),
        plugins=[StrictStructSchemaPlugin(), tracing_plugin()],
        cors_config=CORSConfig(allow_origins=list(settings.api.cors_origins)) if settings.api.cors_origins else None,
        request_max_body_size=settings.api.max_body_bytes,
        request_class=ApiRequest,
        before_send=[security_headers],  # security headers on every response
        logging_config=None,  # logging is configured once, by service.logs
    )

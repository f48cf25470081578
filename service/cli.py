"""agentfarm: run Agent Farm (serve, worker, dev) and use it (submit, watch, show, list, cancel, report).

The entry point: it parses the command line and hands over to the command. The client commands live
in ``service.client`` and ``agentfarm dev`` in ``service.dev``; a client command imports neither the
server's parts nor crewai.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, get_args

import structlog

from jobs.kinds import KINDS, QUEUES, Queue
from jobs.models import Status
from jobs.settings import Settings, SettingsError, load_settings
from service import client
from service.client import ClientError, kind_arg, kinds_help, limit_arg

if TYPE_CHECKING:
    from jobs.telemetry import Telemetry

log = structlog.get_logger("agentfarm.cli")

DESCRIPTION = """\
Agent Farm: LLM agent crews as durable background jobs behind an HTTP API.

Server commands (serve, worker, dev) read their settings from the environment
(and .env). Client commands talk to AGENTFARM_URL (default
http://127.0.0.1:8000) with the key in AGENTFARM_API_KEY.
"""

EPILOG = """\
examples:
  agentfarm dev                                   Redis, the API and a worker (what `make run` starts)
  agentfarm submit research topic='tidal energy' depth=basic --watch
  agentfarm list --status completed
  agentfarm show ID --json
  agentfarm report ID > report.md

`agentfarm COMMAND --help` tells more about each command.
"""


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"agentfarm: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from service.logs import configure_logging

    configure_logging(settings.log.level.upper(), settings.log.format)
    return settings


def _telemetry(service_name: str) -> Telemetry:
    """OpenTelemetry from the standard OTEL_* variables; logs also go over OTLP when an endpoint is set."""
    from jobs.telemetry import setup_telemetry

    try:
        telemetry = setup_telemetry(service_name)
    except ValueError as exc:
        print(f"agentfarm: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    handler = telemetry.log_handler()
    if handler is not None:
        logging.getLogger().addHandler(handler)
    telemetry.instrument_redis()
    log.info(
        "telemetry",
        enabled=telemetry.enabled,
        traces_to=telemetry.traces_target.endpoint if telemetry.traces_target else None,
        logs_to=telemetry.logs_target.endpoint if telemetry.logs_target else None,
    )
    return telemetry


def cmd_serve(args: argparse.Namespace) -> int:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from service.app import create_app

    settings = _settings()
    telemetry = _telemetry("agentfarm-api")
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None  # one line per request comes from our own middleware
    config.graceful_timeout = 10
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, not hypercorn's own

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "api_starting",
            bind=config.bind,
            model=settings.llm.model_name,
            demo_model=settings.llm.is_demo,
            tenants=sorted({k.tenant for k in settings.api.api_keys}),
        )
        if not settings.api.api_keys:
            log.warning("no_api_keys", hint="set AGENTFARM_API_KEYS=tenant:key; every request will get 401")
        await serve(create_app(settings), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    try:
        asyncio.run(main())
    finally:
        telemetry.shutdown()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.llm.is_demo:
        log.warning(
            "demo_model",
            model=settings.llm.model_name,
            hint="no AGENTFARM_LLM_MODEL set: reports come from the built-in offline demo model",
        )
    telemetry = _telemetry("agentfarm-worker")
    from jobs.metrics import start_worker_metrics_server
    from jobs.worker import serve  # imports crewai: only worker processes pay for it

    try:
        start_worker_metrics_server(settings.worker.metrics_port)
    except OSError as exc:
        log.warning(
            "worker_metrics_not_served",
            port=settings.worker.metrics_port,
            error=str(exc),
            hint="set AGENTFARM_WORKER_METRICS_PORT to a free port (or 0 for none) per worker process",
        )
    queues: tuple[Queue, ...] = tuple(dict.fromkeys(args.queue or QUEUES))
    try:
        asyncio.run(serve(settings, queues, burst=args.burst))
    finally:
        telemetry.shutdown()
    stuck = [t.name for t in threading.enumerate() if t.name.startswith("crew") and t.is_alive()]
    if stuck:
        # Stopped crews still inside an LLM call: their tasks were handed back and their next
        # call is refused, so waiting for them (up to the LLM timeout) would only delay the exit.
        log.info("worker_exit_abandoning_threads", threads=len(stuck))
        logging.shutdown()
        os._exit(0)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    """Operator commands on the dead-letter list; they talk to Redis with the service's settings."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from jobs import dlq
    from jobs.connections import describe, redis_client
    from jobs.store import TaskStore

    settings = _settings()

    async def run() -> int:
        pool = redis_client(settings.redis)
        try:
            await pool.ping()
        except (OSError, RedisConnectionError, RedisTimeoutError):
            await pool.aclose()
            raise ClientError(
                f"cannot connect to Redis at {describe(settings.redis)}; set AGENTFARM_REDIS_URL (`make run` prints it)"
            ) from None
        store = TaskStore(pool, settings.task_ttl_s)
        try:
            if args.action == "list":
                entries = await dlq.entries(pool, store, args.limit)
                if not entries:
                    print("no failed tasks", file=sys.stderr)
                for task in entries:
                    error = task.error.type + ": " + task.error.message if task.error else ""
                    print(f"{task.id}  {task.kind:<16} {task.tenant:<12} attempts={task.attempt}  {error}")
                return 0
            try:
                task = await dlq.requeue(pool, store, args.task_id)
            except dlq.NotDeadLettered:
                print(f"agentfarm: task {args.task_id} is not in the dead-letter list", file=sys.stderr)
                return 1
            print(f"{task.id} re-queued ({task.kind})")
            return 0
        finally:
            await pool.aclose()

    return asyncio.run(run())


def _version() -> str:
    try:
        return metadata.version("agentfarm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON (machine-readable)")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="agentfarm", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"agentfarm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=epilog, formatter_class=raw)

    p = command("serve", "run the HTTP API (hypercorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = command("worker", "run a worker for one or more queues")
    p.add_argument("--queue", action="append", choices=QUEUES, help="queue to serve (repeatable; default: all)")
    p.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    p.set_defaults(func=cmd_worker)

    dev_epilog = (
        "Unless AGENTFARM_REDIS_URL is set, it starts its own redis-server (installed\n"
        "with apt-get when missing and run as root), with its data in .run/redis.\n"
        "The API key and operator key are kept in .run/. With make: make run PORT=8001 REDIS_PORT=6391"
    )
    p = command("dev", "run Redis, the API and a worker together; Ctrl-C stops all", dev_epilog)
    p.add_argument("--host", default="127.0.0.1", help="where the API listens (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    p.add_argument("--redis-port", type=int, default=6390, help="the dev Redis's port (default 6390)")
    p.set_defaults(func=_dev)
    _client_commands(command)
    p = command("dlq", "operators: list or re-queue failed tasks (talks to AGENTFARM_REDIS_URL)")
    dlq_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = dlq_sub.add_parser("list", help="failed tasks, most recent first")
    q.add_argument("--limit", type=int, default=100)
    q = dlq_sub.add_parser("requeue", help="give a failed task a fresh start")
    q.add_argument("task_id", metavar="ID")
    p.set_defaults(func=cmd_dlq)
    return parser


def _client_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    kinds = ", ".join(KINDS)
    p = command("submit", "submit a task and print its id", kinds_help())
    p.add_argument("kind", type=kind_arg, metavar="KIND", help=f"one of {kinds} (or technical-review)")
    p.add_argument("fields", nargs="*", metavar="name=value", help="the task's fields (listed below)")
    p.add_argument("--watch", action="store_true", help="follow its progress until it finishes")
    _json_option(p)
    p.set_defaults(func=client.cmd_submit)

    p = command("watch", "follow a task's progress until it finishes (exit code 0 if it completed)")
    p.add_argument("task_id", metavar="ID")
    _json_option(p)
    p.set_defaults(func=client.cmd_watch)

    p = command("show", "show a task: status, progress, params, error, usage")
    p.add_argument("task_id", metavar="ID")
    _json_option(p)
    p.set_defaults(func=client.cmd_show)

    p = command("list", "list your tasks, newest first")
    p.add_argument("--status", choices=get_args(Status))
    p.add_argument("--kind", type=kind_arg, metavar="KIND", help=f"one of {kinds}")
    p.add_argument("--limit", type=limit_arg, default=20, help="how many, 1 to 100 (default 20)")
    _json_option(p)
    p.set_defaults(func=client.cmd_list)

    p = command("report", "print a completed task's report (markdown)")
    p.add_argument("task_id", metavar="ID")
    p.set_defaults(func=client.cmd_report)

    p = command("cancel", "cancel a queued, retrying or running task")
    p.add_argument("task_id", metavar="ID")
    _json_option(p)
    p.set_defaults(func=client.cmd_cancel)


def _dev(args: argparse.Namespace) -> int:
    from service.dev import cmd_dev

    return cmd_dev(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ClientError as exc:
        print(f"agentfarm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nagentfarm: interrupted", file=sys.stderr)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())

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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib import metadata
from types import FrameType
from typing import TYPE_CHECKING, Any, get_args

import structlog

from jobs.kinds import KINDS, QUEUES, Queue
from jobs.models import Status
from jobs.settings import Settings, SettingsError, load_settings
from service import client
from service.children import own_session
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


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run the API's main coroutine on uvloop where it is installed (asyncio's own loop otherwise).

    The API spends most of its CPU in the loop, sockets and Redis replies: uvloop took
    ≈ 15 % off its CPU per submit under load (docs/benchmarks.md).
    """
    try:
        import uvloop  # not built for every platform (Windows)
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _serve_processes(args)
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from service.app import create_app
    from service.events import closing_event

    settings = _settings()
    telemetry = _telemetry("agentfarm-api")
    config = Config()
    config.bind = _bind(args)
    config.accesslog = None  # one line per request comes from our own middleware
    config.graceful_timeout = 10
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, not hypercorn's own

    app = create_app(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            # Open event streams end first, with a comment telling clients to reconnect elsewhere;
            # then hypercorn stops, waiting up to its graceful timeout for other requests.
            closing_event(app).set()
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        log.info(
            "api_starting",
            bind=config.bind,
            model=settings.llm.model_name,
            demo_model=settings.llm.is_demo,
            tenants=sorted({k.tenant for k in settings.api.api_keys}),
        )
        if not settings.api.api_keys:
            log.warning("no_api_keys", hint="set AGENTFARM_API_KEYS=tenant:key; every request will get 401")
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    try:
        run_service(main())
    finally:
        telemetry.shutdown()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.processes > 1:
        return _worker_processes(args)
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
        # asyncio's own loop: under uvloop the worker's loop took a larger share of its CPU
        # (py-spy, 600-job drains: 24 % against 15 %) and drained no faster (docs/benchmarks.md).
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


# --- serve --workers N, worker --processes N: child processes supervised by this one -------------


def _bind(args: argparse.Namespace) -> list[str]:
    """Where hypercorn listens: host:port, or for a child of ``serve --workers`` its own SO_REUSEPORT socket
    on the shared port (so the kernel spreads connections over the processes)."""
    if not args.reuse_port:
        return [f"{args.host}:{args.port}"]
    family, kind, proto, _, address = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        print(f"agentfarm serve: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    return [f"fd://{sock.detach()}"]  # hypercorn listens on it and owns it from here


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (a plain bind fails against SO_REUSEPORT listeners too)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _serve_processes(args: argparse.Namespace) -> int:
    """``serve --workers N``: N API processes on one port, each a full ``serve``."""
    _settings()  # a bad setting is one message here, not N
    if not _port_free(args.host, args.port):
        print(
            f"agentfarm serve: port {args.port} on {args.host} is in use; choose another with --port", file=sys.stderr
        )
        return 1
    command = [*_this_command(), "serve", "--host", args.host, "--port", str(args.port), "--reuse-port"]
    return _supervise("api", [(command, dict(os.environ))] * args.workers)


def _worker_processes(args: argparse.Namespace) -> int:
    """``worker --processes N``: N full worker processes (each with its own slots, thread pool and Redis pool)."""
    settings = _settings()
    command = [*_this_command(), "worker"]
    for queue in args.queue or ():
        command += ["--queue", queue]
    if args.burst:
        command.append("--burst")
    children = []
    for index in range(args.processes):
        env = dict(os.environ)
        if settings.worker.metrics_port:  # one /metrics port per process: the setting's, then the next ones
            env["AGENTFARM_WORKER_METRICS_PORT"] = str(settings.worker.metrics_port + index)
        children.append((command, env))
    return _supervise("worker", children)


def _this_command() -> list[str]:
    return [sys.executable, "-m", "service.cli"]


def _exit_code(code: int) -> int:
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it


def _supervise(what: str, children: list[tuple[list[str], dict[str, str]]]) -> int:
    """Run the child processes until all have exited.

    SIGTERM/SIGINT are forwarded to every child (a second one too: a worker then
    skips its grace period). A child that fails on its own (not after a signal)
    stops the others with SIGTERM. Exit code: 0 when every child exited 0, else
    the first failure's.
    """
    group = _Children(what)
    previous = {signum: signal.signal(signum, group.forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command, env in children:
            if group.signals:
                break  # stopped while starting: start no more
            group.start(command, env)
        log.info(f"{what}_processes_started", pids=[p.pid for p in group.processes])
        while group.running():
            group.check()
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        group.send(signal.SIGTERM)  # a no-op unless an error of our own got us here: leave no child behind
    return group.wait()


class _Children:
    """The processes ``_supervise`` runs, the signals it got and the first failure."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.processes: list[subprocess.Popen[bytes]] = []
        self.signals: list[int] = []
        self.failed: int | None = None

    def start(self, command: list[str], env: dict[str, str]) -> None:
        # No threads run in this process, so preexec_fn is safe.
        child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=own_session())  # noqa: PLW1509
        self.processes.append(child)

    def forward(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        self.send(signum)

    def send(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def running(self) -> bool:
        return any(p.poll() is None for p in self.processes)

    def check(self) -> None:
        """A child that failed on its own stops the others."""
        for process in self.processes:
            if process.returncode in (None, 0) or self.failed is not None:
                continue
            self.failed = _exit_code(process.returncode)
            if not self.signals:
                log.warning(f"{self.what}_process_failed", pid=process.pid, exit_code=process.returncode)
                self.send(signal.SIGTERM)

    def wait(self) -> int:
        for process in self.processes:
            code = process.wait()
            if code != 0 and self.failed is None:
                self.failed = _exit_code(code)
        log.info(f"{self.what}_processes_stopped", exit_codes=[p.returncode for p in self.processes])
        return self.failed or 0


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


def _at_least_one(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {raw!r})")
    return value


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON (machine-readable)")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="agentfarm", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"agentfarm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, epilog: str | None = None, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, epilog=epilog, formatter_class=raw, aliases=list(aliases)
        )

    p = command("serve", "run the HTTP API (hypercorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="API processes sharing the port (SO_REUSEPORT; default 1); about one per core",
    )
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for --workers' children
    p.set_defaults(func=cmd_serve)

    p = command("worker", "run a worker for one or more queues")
    p.add_argument("--queue", action="append", choices=QUEUES, help="queue to serve (repeatable; default: all)")
    p.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    p.add_argument(
        "--processes",
        type=_at_least_one,
        default=1,
        metavar="N",
        help=(
            "worker processes (default 1), each with AGENTFARM_WORKER_CONCURRENCY slots; one process uses at most "
            "one core (the GIL): run about one per core. Their /metrics ports: AGENTFARM_WORKER_METRICS_PORT, +1, ..."
        ),
    )
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

    p = command("report", "print a completed task's report, or save it: report ID --format pdf -o report.pdf")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--format", choices=client.REPORT_FORMATS, help="md (default), json, html or pdf")
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (the format follows its suffix)")
    p.set_defaults(func=client.cmd_report)
    client.kind_commands(command)  # one command per kind: agentfarm research "topic" --depth basic --wait

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

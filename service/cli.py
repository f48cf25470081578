"""The ``agentfarm`` command: run the service (serve, worker, dev) and use it (submit, watch, list, report).

Server commands read their settings from the environment (and ``.env``);
client commands talk to ``AGENTFARM_URL`` with ``AGENTFARM_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import structlog

from jobs.kinds import KINDS, QUEUES, Queue
from jobs.metrics import start_worker_metrics_server
from jobs.settings import Settings, SettingsError, load_settings
from jobs.telemetry import Telemetry, setup_telemetry
from service.logs import configure_logging

log = structlog.get_logger("agentfarm.cli")

DEFAULT_URL = "http://127.0.0.1:8000"


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"agentfarm: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _telemetry(service_name: str) -> Telemetry:
    """OpenTelemetry from the standard OTEL_* variables; logs also go over OTLP when an endpoint is set."""
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
            tenants=sorted({k.tenant for k in settings.api_keys}),
        )
        if not settings.api_keys:
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
    from jobs.worker import serve  # imports crewai: only worker processes pay for it

    try:
        start_worker_metrics_server(settings.worker_metrics_port)
    except OSError as exc:
        log.warning(
            "worker_metrics_not_served",
            port=settings.worker_metrics_port,
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


def cmd_dev(args: argparse.Namespace) -> int:
    """Redis (unless AGENTFARM_REDIS_URL is set), the API and a worker, until Ctrl-C."""
    run_dir = Path(".run")
    run_dir.mkdir(exist_ok=True)
    env = os.environ.copy()
    children: list[subprocess.Popen[bytes]] = []
    if not env.get("AGENTFARM_REDIS_URL"):
        (run_dir / "redis").mkdir(exist_ok=True)
        children.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(args.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(run_dir / "redis"),
                    "--appendonly",
                    "yes",
                    "--maxmemory-policy",
                    "noeviction",
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        env["AGENTFARM_REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
    key_file = run_dir / "dev-api-key"
    if not env.get("AGENTFARM_API_KEYS"):
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(24))
        env["AGENTFARM_API_KEYS"] = f"dev:{key_file.read_text().strip()}"
    api_key = env["AGENTFARM_API_KEYS"].split(",")[0].partition(":")[2]
    try:
        load_settings(env)
    except SettingsError as exc:
        print(f"agentfarm: {exc}", file=sys.stderr)
        _stop(children)
        return 2
    me = [sys.executable, "-m", "service.cli"]
    children.append(subprocess.Popen([*me, "serve", "--host", args.host, "--port", str(args.port)], env=env))
    children.append(subprocess.Popen([*me, "worker"], env=env))
    url = f"http://{args.host}:{args.port}"
    # SIGTERM (from a supervisor or `timeout`) stops the children just as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if _wait_ready(url, children):
            _banner(url, api_key)
        else:
            print("agentfarm dev: the API did not become ready; see the log above", file=sys.stderr)
            return 1
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    else:
        print("agentfarm dev: a process exited; stopping the others", file=sys.stderr)
        return 1
    finally:
        _stop(children)


def _wait_ready(url: str, children: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and all(c.poll() is None for c in children):
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).json().get("status") == "ready":
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    return False


def _banner(url: str, key: str) -> None:
    print(
        f"""
  Agent Farm is running.
    API:      {url}   (docs: {url}/schema)
    API key:  {key}

  Try:
    curl -s -X POST {url}/v1/tasks/research -H 'Authorization: Bearer {key}' \\
         -H 'Content-Type: application/json' -d '{{"topic": "solid-state batteries", "depth": "basic"}}'
    AGENTFARM_API_KEY={key} agentfarm submit research topic="solid-state batteries" --watch

  Ctrl-C stops everything.
""",
        flush=True,
    )


def _stop(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()


# --- client commands -------------------------------------------------------------


def _client() -> httpx.Client:
    key = os.environ.get("AGENTFARM_API_KEY", "")
    if not key:
        print("agentfarm: set AGENTFARM_API_KEY to your API key", file=sys.stderr)
        raise SystemExit(2)
    return httpx.Client(
        base_url=os.environ.get("AGENTFARM_URL", DEFAULT_URL), headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail", response.text)
        except ValueError:
            detail = response.text
        print(f"agentfarm: {response.status_code}: {detail}", file=sys.stderr)
        raise SystemExit(1)
    return response.json() if "json" in response.headers.get("content-type", "") else response.text


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, str] = {}
    for pair in args.fields:
        name, sep, value = pair.partition("=")
        if not sep:
            print(f"agentfarm: expected name=value, got {pair!r}", file=sys.stderr)
            return 2
        body[name] = value
    with _client() as client:
        task = _check(client.post(f"/v1/tasks/{KINDS[args.kind].path}", json=body))
    print(task["id"])
    return _watch(task["id"]) if args.watch else 0


def cmd_watch(args: argparse.Namespace) -> int:
    return _watch(args.task_id)


def _watch(task_id: str) -> int:
    tty = sys.stdout.isatty()
    last = ""
    with _client() as client:
        while True:
            task = _check(client.get(f"/v1/tasks/{task_id}"))
            bar = "#" * (task["progress"] // 5)
            line = f"[{bar:<20}] {task['progress']:>3}%  {task['status']:<9} {task['stage']}"
            if line != last:
                print(("\r" + line.ljust(100)) if tty else line, end="" if tty else "\n", flush=True)
                last = line
            if task["status"] in {"completed", "failed", "cancelled"}:
                break
            time.sleep(0.5)
    if tty:
        print()
    if task["status"] == "failed":
        print(f"failed: {task['error']['type']}: {task['error']['message']}", file=sys.stderr)
    return 0 if task["status"] == "completed" else 1


def cmd_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"status": args.status, "kind": args.kind, "limit": args.limit}.items() if v}
    with _client() as client:
        page = _check(client.get("/v1/tasks", params=params))
    for task in page["items"]:
        print(f"{task['id']}  {task['kind']:<16} {task['status']:<9} {task['progress']:>3}%  {task['created_at']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        task = _check(client.post(f"/v1/tasks/{args.task_id}/cancel"))
    print(f"{task['id']} {task['status']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    with _client() as client:
        print(_check(client.get(f"/v1/tasks/{args.task_id}/report")))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    """Operator commands on the dead-letter list; they talk to Redis with the service's settings."""
    from arq.connections import RedisSettings, create_pool

    from jobs import dlq
    from jobs.queue import deserialize, serialize
    from jobs.store import TaskStore

    settings = _settings()

    async def run() -> int:
        pool = await create_pool(
            RedisSettings.from_dsn(settings.redis_url), job_serializer=serialize, job_deserializer=deserialize
        )
        store = TaskStore(pool, settings.task_ttl_s)
        try:
            if args.action == "list":
                for task in await dlq.entries(pool, store, args.limit):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentfarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP API (hypercorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a worker for one or more queues")
    p.add_argument("--queue", action="append", choices=QUEUES, help="queue to serve (repeatable; default: all)")
    p.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("dev", help="run Redis, the API and a worker together (Ctrl-C stops all)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--redis-port", type=int, default=6390)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("submit", help="submit a task: agentfarm submit research topic='...' depth=basic")
    p.add_argument("kind", choices=list(KINDS))
    p.add_argument("fields", nargs="*", metavar="name=value")
    p.add_argument("--watch", action="store_true", help="follow its progress until it finishes")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("watch", help="follow a task's progress until it finishes")
    p.add_argument("task_id")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("list", help="list your tasks, newest first")
    p.add_argument("--status")
    p.add_argument("--kind", choices=list(KINDS))
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="print a completed task's report (markdown)")
    p.add_argument("task_id")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("cancel", help="cancel a queued or running task")
    p.add_argument("task_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("dlq", help="operators: list or re-queue failed tasks (uses AGENTFARM_REDIS_URL)")
    dlq_sub = p.add_subparsers(dest="action", required=True)
    q = dlq_sub.add_parser("list", help="failed tasks, most recent first")
    q.add_argument("--limit", type=int, default=100)
    q = dlq_sub.add_parser("requeue", help="give a failed task a fresh start")
    q.add_argument("task_id")
    p.set_defaults(func=cmd_dlq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

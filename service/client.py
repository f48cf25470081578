"""The ``agentfarm`` client commands: one per kind, submit, watch, show, list, cancel and report over the HTTP API.

They talk to ``AGENTFARM_URL`` with ``AGENTFARM_API_KEY`` and import nothing heavy (no crewai, no
server settings): a client starts in a fraction of a second on any machine that can reach the API.
"""

# A command line client prints, and imports rich only when it draws:
# ruff: noqa: T201, PLC0415

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import httpx
import msgspec

from jobs.kinds import KINDS

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = {"completed", "failed", "cancelled"}


class ClientError(Exception):
    """A failure the user can act on: printed as one line (or a few), exit code 1."""


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"agentfarm: {message}", file=sys.stderr)
    raise SystemExit(code)


# --- the kinds table, as the command line sees it ---------------------------------


def kind_arg(value: str) -> str:
    """``technical-review`` (the URL's spelling) and ``technical_review`` (the kind's name) are the same kind."""
    name = value.strip().lower().replace("-", "_")
    for kind, spec in KINDS.items():
        if name in {kind, spec.path.replace("-", "_")}:
            return kind
    choices = ", ".join(KINDS)
    raise argparse.ArgumentTypeError(f"unknown kind {value!r} (choose from {choices})")


def _describe(info: msgspec.inspect.Type) -> tuple[str, str]:
    """A field's accepted values and its description, from its msgspec type (``X | None``: as X)."""
    description = ""
    if isinstance(info, msgspec.inspect.Metadata):
        description = str((info.extra_json_schema or {}).get("description", ""))
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        real = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(real) == 1:
            values, inner = _describe(real[0])
            return values, description or inner
    return _values(info), description


def _values(info: msgspec.inspect.Type) -> str:
    if isinstance(info, msgspec.inspect.LiteralType):
        return " | ".join(str(v) for v in info.values)
    if isinstance(info, msgspec.inspect.StrType):
        low, high = info.min_length, info.max_length
        if low and high:
            return f"text, {low}-{high:,} chars"
        return f"text, up to {high:,} chars" if high else "text"
    if isinstance(info, msgspec.inspect.IntType) and info.ge is not None and info.le is not None:
        return f"integer, {info.ge:,}-{info.le:,}"
    return type(info).__name__.removesuffix("Type").lower()


def kind_fields(kind: str) -> list[msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(KINDS[kind].params)
    assert isinstance(info, msgspec.inspect.StructType)
    return sorted(info.fields, key=lambda f: (not f.required, f.name == "language"))


def kinds_help() -> str:
    """The ``submit --help`` epilog: every kind and its fields, generated from the kinds table."""
    lines = ["kinds and their fields (name=value):"]
    for kind, spec in KINDS.items():
        alias = f" (or {spec.path})" if spec.path != kind else ""
        lines.append(f"  {kind}{alias}: {spec.params.__doc__ or ''}".rstrip())
        for field in kind_fields(kind):
            values, description = _describe(field.type)
            if field.required or field.default is None:
                default = "required" if field.required else "optional"
            else:
                default = f"default {field.default or '(empty)'}"
            lines.append(f"    {field.encode_name:<10} {values}; {default}. {description}".rstrip())
    lines += [
        "",
        "example:",
        "  agentfarm submit research topic='solid-state batteries' depth=basic --watch",
    ]
    return "\n".join(lines)


# --- HTTP ------------------------------------------------------------------------------


def client() -> httpx.Client:
    key = os.environ.get("AGENTFARM_API_KEY", "")
    if not key:
        fail("set AGENTFARM_API_KEY to your API key (`make run` prints one)", 2)
    url = os.environ.get("AGENTFARM_URL", DEFAULT_URL).rstrip("/")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def request(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One API call; a transport failure or a problem+json answer becomes a short ClientError."""
    response = send(http, method, path, **kwargs)
    if "json" in response.headers.get("content-type", ""):
        return response.json()
    return response.text


def send(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One API call, answered 2xx (else a short ClientError)."""
    try:
        response = http.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise ClientError(
            f"cannot connect to the API at {http.base_url} (is it running? `make run` starts one; "
            "AGENTFARM_URL sets where it is)"
        ) from None
    except httpx.TimeoutException:
        raise ClientError(f"the API at {http.base_url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ClientError(f"talking to the API at {http.base_url} failed: {exc}") from None
    if response.status_code >= 400:
        raise ClientError(problem_text(response))
    return response


def problem_text(response: httpx.Response) -> str:
    """``400 Invalid Request: topic: Expected ...``, plus one line per field error when there are several."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return f"{response.status_code} {response.reason_phrase}: {response.text.strip()[:300]}"
    head = f"{response.status_code} {problem.get('title') or response.reason_phrase}"
    detail = str(problem.get("detail") or "").strip()
    errors = [e for e in problem.get("errors") or [] if isinstance(e, dict)]
    fields = [f"{e.get('field') or e.get('source', '')}: {e.get('message', '')}" for e in errors]
    if len(fields) > 1:
        return "\n".join([f"{head}: {detail}" if detail else head, *(f"  {f}" for f in fields)])
    text = f"{head}: {detail or (fields[0] if fields else '')}".rstrip(": ")
    if response.status_code == 401:
        text += " (check AGENTFARM_API_KEY)"
    retry = response.headers.get("retry-after")
    return f"{text} (retry after {retry} s)" if retry else text


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --- commands --------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    known = {f.encode_name for f in kind_fields(args.kind)}
    body: dict[str, str] = {}
    for pair in args.fields:
        name, sep, value = pair.partition("=")
        if not sep:
            fail(f"expected name=value, got {pair!r} (see `agentfarm submit --help`)", 2)
        if name not in known:
            fail(f"{args.kind} has no field {name!r}; its fields: {', '.join(sorted(known))}", 2)
        body[name] = value
    return submit_and_follow(args.kind, body, follow=args.watch, as_json=args.json)


def submit_and_follow(kind: str, body: dict[str, Any], *, follow: bool, as_json: bool) -> int:
    """POST one task of ``kind``; print its id (or the API's JSON), and with ``follow`` watch it to the end."""
    with client() as http:
        task = request(http, "POST", f"/v1/tasks/{KINDS[kind].path}", json=body)
        if follow:
            if not as_json:
                print(task["id"], flush=True)
            return watch(http, task["id"], as_json=as_json)
    if as_json:
        print_json(task)
    else:
        print(task["id"])
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with client() as http:
        return watch(http, args.task_id, as_json=args.json)


def watch(http: httpx.Client, task_id: str, *, as_json: bool = False) -> int:
    """Follow a task until it finishes: a progress bar on a terminal, a line per change otherwise."""
    from rich.console import Console

    console = Console(stderr=as_json)
    try:
        if as_json:
            task = _poll(http, task_id, lambda _: None)
        elif console.is_terminal:
            task = _watch_with_bar(http, task_id, console)
        else:
            last: list[str] = []

            def line(task: dict[str, Any]) -> None:
                text = f"{task['progress']:>3}%  {task['status']:<9} {task['stage']}".rstrip()
                if last != [text]:
                    print(text, flush=True)
                    last[:] = [text]

            task = _poll(http, task_id, line)
    except KeyboardInterrupt:
        print(f"\nagentfarm: stopped watching; the task goes on (agentfarm watch {task_id})", file=sys.stderr)
        return 130
    if as_json:
        print_json(task)
    if task["status"] == "failed" and task.get("error"):
        print(f"agentfarm: task failed: {task['error']['type']}: {task['error']['message']}", file=sys.stderr)
    elif task["status"] == "cancelled":
        print("agentfarm: task cancelled", file=sys.stderr)
    return 0 if task["status"] == "completed" else 1


def _poll(http: httpx.Client, task_id: str, show: Any) -> dict[str, Any]:
    """Follow the task's event stream to its end; the final task (with its result or error).

    A dropped connection (or a server shutting down) is resumed with
    ``Last-Event-ID``: no event is missed or shown twice.
    """
    task: dict[str, Any] = request(http, "GET", f"/v1/tasks/{task_id}")  # the usual errors, said the usual way
    show(task)
    if task["status"] in FINISHED:
        return task
    last_id = 0
    failures = 0
    while True:
        try:
            for event_id, data in _events(http, task_id, last_id):
                last_id, failures = event_id, 0
                show(data)
                if data["status"] in FINISHED and data["type"] in FINISHED:
                    final: dict[str, Any] = request(http, "GET", f"/v1/tasks/{task_id}")
                    return final
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            failures += 1
            if failures > RECONNECTS:
                raise ClientError(
                    f"cannot connect to the API at {http.base_url}: lost the event stream of task {task_id} "
                    f"({exc.__class__.__name__}, {RECONNECTS} retries)"
                ) from None
        time.sleep(min(0.2 * 2**failures, 5.0))  # the stream ended early (a server restart): resume


RECONNECTS = 8


def _events(http: httpx.Client, task_id: str, after: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(id, data) of each event after ``after``, until the server ends the stream."""
    headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
    timeout = httpx.Timeout(30, read=120)  # keep-alive comments arrive every 15 s
    with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=headers, timeout=timeout) as response:
        if response.status_code >= 400:
            response.read()
            raise ClientError(problem_text(response))
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "id" in fields and "data" in fields:
                yield int(fields["id"]), json.loads(fields["data"])
            fields = {}


def _watch_with_bar(http: httpx.Client, task_id: str, console: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
    from rich.table import Column

    columns = (
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10, max_width=40)),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]:<9}", table_column=Column(no_wrap=True, min_width=9)),
        TextColumn("{task.fields[stage]}", table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis")),
    )
    with Progress(*columns, console=console, expand=True) as progress:
        bar = progress.add_task("task", total=100, status="", stage="")

        def show(task: dict[str, Any]) -> None:
            progress.update(bar, completed=task["progress"], status=task["status"], stage=task["stage"] or "")

        return _poll(http, task_id, show)


def cmd_show(args: argparse.Namespace) -> int:
    with client() as http:
        task = request(http, "GET", f"/v1/tasks/{args.task_id}")
    if args.json:
        print_json(task)
        return 0
    rows = [
        ("id", task["id"]),
        ("kind", task["kind"]),
        ("status", f"{task['status']}  {task['progress']}%  {task.get('stage') or ''}".rstrip()),
        ("params", json.dumps(task.get("params"), ensure_ascii=False)),
        ("attempt", f"{task.get('attempt')} of {task.get('max_attempts')}"),
        ("created", task.get("created_at")),
        ("finished", task.get("finished_at")),
    ]
    if task.get("error"):
        rows.append(("error", f"{task['error']['type']}: {task['error']['message']}"))
    if task.get("result"):
        rows.append(("title", task["result"]["title"]))
        rows.append(("report", f"agentfarm report {task['id']}"))
    usage = task.get("usage") or {}
    if usage.get("llm_calls"):
        tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        rows.append(("usage", f"{usage['llm_calls']} LLM calls, {tokens} tokens, {usage.get('model')}"))
    for name, value in rows:
        if value:
            print(f"{name + ':':<10}{value}")
    return 0


def limit_arg(value: str) -> int:
    """A page size the API accepts: 1 to 100."""
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 100, got {value!r}") from None
    if not 1 <= limit <= 100:
        raise argparse.ArgumentTypeError(f"must be from 1 to 100, got {limit}")
    return limit


def cmd_list(args: argparse.Namespace) -> int:
    params: dict[str, str | int] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    if args.kind:
        params["kind"] = args.kind
    with client() as http:
        page = request(http, "GET", "/v1/tasks", params=params)
    if args.json:
        print_json(page)
        return 0
    for task in page["items"]:
        print(f"{task['id']}  {task['kind']:<16} {task['status']:<9} {task['progress']:>3}%  {task['created_at']}")
    if not page["items"]:
        print("no tasks", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with client() as http:
        task = request(http, "POST", f"/v1/tasks/{args.task_id}/cancel")
    if args.json:
        print_json(task)
    else:
        print(f"{task['id']} {task['status']}")
    return 0


REPORT_FORMATS = ("md", "json", "html", "pdf")


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report, or save it with ``-o FILE`` (the format from ``--format``, else from the file's suffix)."""
    output: str | None = args.output
    fmt: str = args.format or _format_of(output) or "md"
    with client() as http:
        response = send(http, "GET", f"/v1/tasks/{args.task_id}/report", params={"format": fmt})
    body = response.content
    if not body:
        raise ClientError(f"the API sent an empty {fmt} report for {args.task_id}")
    if output is None or output == "-":
        if fmt == "pdf" and sys.stdout.isatty():
            fail("a PDF is binary: save it with -o FILE (or redirect the output)", 2)
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return 0
    partial = f"{output}.part"
    try:
        with open(partial, "wb") as file:
            file.write(body)
        os.replace(partial, output)
    except OSError as exc:
        raise ClientError(f"cannot write {output}: {exc.strerror or exc}") from None
    print(f"{output}: {fmt}, {len(body):,} bytes", file=sys.stderr)
    return 0


def _format_of(path: str | None) -> str | None:
    """``report.pdf`` -> ``pdf``; a suffix that names no format -> None (Markdown)."""
    suffix = os.path.splitext(path or "")[1].lower().lstrip(".")
    suffix = {"markdown": "md", "htm": "html"}.get(suffix, suffix)
    return suffix if suffix in REPORT_FORMATS else None


# --- one command per kind: ``agentfarm research "topic" --depth basic --wait`` ----------


def kind_commands(command: Any) -> None:
    """A command per row of the kinds table: its first required field is the argument, the others options.

    A kind's command is its URL path (``technical-review``); a hyphenated path also answers to its
    last word (``review``) when nothing else is called that.
    """
    names = {spec.path for spec in KINDS.values()} | set(KINDS)
    for kind, spec in KINDS.items():
        fields = kind_fields(kind)
        main = fields[0] if fields and fields[0].required else None
        short = spec.path.rsplit("-", 1)[-1]
        aliases = [short] if "-" in spec.path and short not in names else []
        example = f'  agentfarm {spec.path} "..." --wait' if main else f"  agentfarm {spec.path} --wait"
        parser = command(spec.path, spec.summary, f"example:\n{example}", aliases=aliases)
        for field in fields:
            values, description = _describe(field.type)
            choices = _choices(field.type)
            text = f"{description} ({values})" if description else values
            if field is main:
                parser.add_argument(field.encode_name, metavar=field.encode_name.upper(), help=text)
                continue
            default = "" if field.required else f"; default {field.default}" if field.default not in ("", None) else ""
            parser.add_argument(
                f"--{field.encode_name.replace('_', '-')}",
                dest=field.encode_name,
                choices=choices,
                type=_arg_type(field.type),
                required=field.required,
                help=f"{text}{default}",
            )
        parser.add_argument("--wait", action="store_true", help="follow its progress until it finishes")
        parser.add_argument("--json", action="store_true", help="print the API's JSON (machine-readable)")
        parser.set_defaults(func=cmd_kind, kind=kind, body_fields=[f.encode_name for f in fields])


def cmd_kind(args: argparse.Namespace) -> int:
    """Submit one task of ``args.kind`` from its options; with ``--wait``, follow it to the end."""
    body = {name: getattr(args, name) for name in args.body_fields if getattr(args, name) is not None}
    return submit_and_follow(args.kind, body, follow=args.wait, as_json=args.json)


def _unwrap(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):  # ``X | None``: the option is X, and may be left out
        real = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(real) == 1:
            return _unwrap(real[0])
    return info


def _choices(info: msgspec.inspect.Type) -> list[str] | None:
    info = _unwrap(info)
    return [str(v) for v in info.values] if isinstance(info, msgspec.inspect.LiteralType) else None


def _arg_type(info: msgspec.inspect.Type) -> Any:
    info = _unwrap(info)
    if isinstance(info, msgspec.inspect.IntType):
        return int
    if isinstance(info, msgspec.inspect.FloatType):
        return float
    return str

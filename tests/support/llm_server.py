"""A real OpenAI-compatible HTTP server with scripted replies, for tests.

crewai talks to it through its native OpenAI client over HTTP, so the whole
LLM client path (request building, structured outputs, usage parsing, retries)
runs as it would against a provider. Replies are scripted per test: by
default every chat completion answers in the ReAct "Final Answer" form, and a
request carrying a JSON-schema ``response_format`` gets an instance of that
schema.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP status, optional delay and optional content."""

    status: int = 200
    content: str | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """A request the server received; ``at`` is when it started (before any scripted delay)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float

    @property
    def text(self) -> str:
        """All message contents joined, for matching on prompt text."""
        return _text_of(self.body)


@dataclass(frozen=True)
class Billed:
    """A completion the server delivered, with the usage it reported (what a provider bills)."""

    request: Recorded
    prompt_tokens: int
    completion_tokens: int
    at: float


def _text_of(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token per word."""
    return len(text.split())


def instance_of(schema: dict[str, Any], defs: dict[str, Any], hint: str) -> Any:
    """Build a value that satisfies a (strict, OpenAI-style) JSON schema."""
    if "$ref" in schema:
        return instance_of(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, hint)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return instance_of(schema[key][0], defs, hint)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance_of(sub, defs, f"{hint} {name}") for name, sub in props.items()}
    if kind == "array":
        return [instance_of(schema.get("items", {}), defs, f"{hint} item {i}") for i in (1, 2)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    return f"Scripted {hint.strip()}".strip()


class ScriptedLLM:
    """Runs the server on a free localhost port until ``close()``."""

    def __init__(self, *, model: str = "scripted-model") -> None:
        self.model = model
        self.requests: list[Recorded] = []
        self.billed: list[Billed] = []
        self._answered: list[Recorded] = []  # errors included
        self.default_delay_s = 0.0
        self.text_reply: Callable[[Recorded], str] = default_text_reply
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue replies to use, in order, before falling back to the default."""
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        """Forget recorded requests, queued replies and overrides."""
        with self._lock:
            self.requests.clear()
            self.billed.clear()
            self._answered.clear()
            self._script.clear()
        self.default_delay_s = 0.0
        self.text_reply = default_text_reply

    def received(self, containing: str | None = None) -> list[Recorded]:
        """Recorded chat requests, optionally only those whose prompt contains a text."""
        with self._lock:
            items = list(self.requests)
        return [r for r in items if containing is None or containing in r.text]

    def completed(self, containing: str | None = None) -> list[Billed]:
        """Completions delivered to the client (and so billed), optionally only for prompts containing a text."""
        with self._lock:
            items = list(self.billed)
        return [b for b in items if containing is None or containing in b.request.text]

    def in_flight(self, containing: str | None = None) -> int:
        """Requests received whose reply has not been delivered yet (or never will be: errors count as done)."""
        with self._lock:
            done = {id(r) for r in self._answered}
            items = list(self.requests)
        return sum(1 for r in items if id(r) not in done and (containing is None or containing in r.text))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if self._script:
                return self._script.popleft()
        return Reply(delay_s=self.default_delay_s)

    def _billed(self, recorded: Recorded, usage: dict[str, int]) -> None:
        billed = Billed(recorded, usage["prompt_tokens"], usage["completion_tokens"], time.time())
        with self._lock:
            self.billed.append(billed)

    def _answer_sent(self, recorded: Recorded) -> None:
        with self._lock:
            self._answered.append(recorded)

    def _completion(self, recorded: Recorded, reply: Reply) -> dict[str, Any]:
        body = recorded.body
        content = reply.content
        if content is None:
            response_format = body.get("response_format") or {}
            if response_format.get("type") == "json_schema":
                schema = response_format["json_schema"]["schema"]
                content = json.dumps(instance_of(schema, schema.get("$defs", {}), "text"))
            else:
                content = self.text_reply(recorded)
        prompt_tokens = count_tokens(recorded.text)
        completion_tokens = count_tokens(content)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Keep test output clean."""

            def do_POST(self) -> None:
                started = time.time()
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                recorded = Recorded(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=started,
                )
                reply = llm._next(recorded)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    if reply.status != 200:
                        message = reply.content or f"scripted error {reply.status}"
                        self._send(reply.status, {"error": {"message": message}}, reply.headers)
                        return
                    completion = llm._completion(recorded, reply)
                    self._send(200, completion, reply.headers)
                    llm._billed(recorded, completion["usage"])
                finally:
                    llm._answer_sent(recorded)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def default_text_reply(recorded: Recorded) -> str:
    """Answer like an agent that is done: a ReAct final answer in markdown."""
    prompt = recorded.text
    return (
        "Thought: I now can give a great answer\n"
        "Final Answer: ## Findings\n\n"
        f"Scripted analysis based on a prompt of {count_tokens(prompt)} words.\n"
    )

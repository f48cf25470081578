"""A stub SearXNG on loopback: ``GET /search?q=...&format=json`` as SearXNG answers it.

Tests set ``urls`` (the result links every query gets, rotated per query so
different queries rank pages differently), or ``mode``: ``"ok"``, ``"empty"``
(200 with no results and an unresponsive engine listed), ``"error"`` (500),
``"hang"`` (answers after ``hang_s``), ``"no_json"`` (403, as SearXNG does
without ``json`` in ``search.formats``). Every query is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class SearchServer:
    def __init__(self) -> None:
        self.urls: list[str] = []
        self.mode = "ok"
        self.hang_s = 30.0
        self.queries: list[tuple[str, str, float]] = []  # (query, language, time)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def received(self, since: float = 0.0) -> list[str]:
        with self._lock:
            return [q for q, _, at in self.queries if at >= since]

    def reset(self) -> None:
        with self._lock:
            self.queries.clear()
        self.urls = []
        self.mode = "ok"
        self.hang_s = 30.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, query: str, index: int) -> dict[str, Any]:
        if self.mode == "empty":
            return {"query": query, "results": [], "unresponsive_engines": [["duckduckgo", "CAPTCHA"]]}
        shift = index % len(self.urls) if self.urls else 0
        ranked = self.urls[shift:] + self.urls[:shift]
        results = [
            {"url": url, "title": f"Result {n} for {query}", "content": f"snippet {n}", "engine": "stub"}
            for n, url in enumerate(ranked, start=1)
        ]
        return {"query": query, "number_of_results": len(results), "results": results, "unresponsive_engines": []}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet."""

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path != "/search":
                    self._send(404, {"error": "not found"})
                    return
                with stub._lock:
                    index = len(stub.queries)
                    stub.queries.append((params.get("q", ""), params.get("language", ""), time.time()))
                if stub.mode == "hang":
                    time.sleep(stub.hang_s)
                if stub.mode == "error":
                    self._send(500, {"error": "engine crashed"})
                elif stub.mode == "no_json" or params.get("format") != "json":
                    self._send(403, {"error": "format not allowed"})
                else:
                    self._send(200, stub.answer(params.get("q", ""), index))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

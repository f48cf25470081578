"""A stub web server with a handful of saved articles, on loopback, that counts what it served.

``/articles/<name>`` serves ``tests/fixtures/pages/<name>.html`` (bytes as saved:
the Russian page is windows-1251); ``/redirect?to=<url>`` answers 302 to ``url``;
``/slow/<name>`` serves the article after ``slow_s`` seconds. Every request is
recorded (path and time) so tests can say which pages a task read, and when.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGES = Path(__file__).resolve().parent.parent / "fixtures" / "pages"


@dataclass(frozen=True)
class Served:
    path: str
    at: float
    user_agent: str


class PageServer:
    def __init__(self) -> None:
        self.slow_s = 0.0
        self.served: list[Served] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/articles/{name}"

    @staticmethod
    def names() -> list[str]:
        return sorted(p.stem for p in PAGES.glob("*.html"))

    @staticmethod
    def html(name: str) -> bytes:
        return (PAGES / f"{name}.html").read_bytes()

    def requests(self, since: float = 0.0) -> list[Served]:
        with self._lock:
            return [s for s in self.served if s.at >= since]

    def reset(self) -> None:
        with self._lock:
            self.served.clear()
        self.slow_s = 0.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet."""

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with server._lock:
                    server.served.append(Served(parts.path, time.time(), self.headers.get("User-Agent", "")))
                if parts.path == "/redirect":
                    target = parse_qs(parts.query).get("to", ["/"])[0]
                    self._send(302, b"", {"Location": target})
                    return
                folder, _, name = parts.path.strip("/").partition("/")
                if folder == "slow":
                    time.sleep(server.slow_s)
                if folder in {"articles", "slow"} and (PAGES / f"{name}.html").is_file():
                    charset = "windows-1251" if name.startswith("ru_") else "utf-8"
                    self._send(200, server.html(name), {"Content-Type": f"text/html; charset={charset}"})
                    return
                self._send(404, b"not found", {"Content-Type": "text/plain"})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the reader gave up (a cancel or a time limit)

        return Handler

"""An in-process OTLP/HTTP receiver, standing in for an OpenTelemetry collector in tests.

It decodes what the real exporters send (protobuf, optionally gzip or deflate)
into plain frozen dataclasses, so tests assert on trace ids, names and resource
attributes without knowing the OTLP message layout.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    service_name: str
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int
    status_code: int
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceivedLog:
    trace_id: str | None
    span_id: str | None
    body: str
    severity: str
    service_name: str
    attributes: dict[str, Any]
    resource: dict[str, Any] = field(default_factory=dict)


class OTLPReceiver:
    """Listens on 127.0.0.1 (free port) for OTLP/HTTP exports until ``close()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._spans: list[ReceivedSpan] = []
        self._logs: list[ReceivedLog] = []
        self.requests: list[str] = []  # paths, in arrival order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-receiver", daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The base URL to put in ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def logs(self, trace_id: str | None = None) -> list[ReceivedLog]:
        with self._lock:
            return [r for r in self._logs if trace_id is None or r.trace_id == trace_id]

    def wait_for(self, predicate: Callable[[OTLPReceiver], bool], timeout_s: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds; False if it still does not after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.1))

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._logs.clear()
            self.requests.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OTLPReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _record(self, path: str, spans: list[ReceivedSpan], logs: list[ReceivedLog]) -> None:
        with self._changed:
            self.requests.append(path)
            self._spans.extend(spans)
            self._logs.extend(logs)
            self._changed.notify_all()


def _handler_for(receiver: OTLPReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = _decompress(self.rfile.read(length), self.headers.get("Content-Encoding", ""))
            if self.path == "/v1/traces":
                receiver._record(self.path, _decode_spans(body), [])
                self._reply(ExportTraceServiceResponse().SerializeToString())
            elif self.path == "/v1/logs":
                receiver._record(self.path, [], _decode_logs(body))
                self._reply(ExportLogsServiceResponse().SerializeToString())
            elif self.path == "/v1/metrics":
                receiver._record(self.path, [], [])
                self._reply(ExportMetricsServiceResponse().SerializeToString())
            else:
                self.send_error(404)

        def _reply(self, payload: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's parameter name
            return  # the test output is not the place for an access log

    return Handler


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _decode_spans(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(  # noqa: PERF401 - three levels deep, a comprehension reads worse
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=span.kind,
                        service_name=str(resource.get("service.name", "")),
                        attributes=_attributes(span.attributes),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=span.status.code,
                        resource=resource,
                    )
                )
    return spans


def _decode_logs(body: bytes) -> list[ReceivedLog]:
    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    logs = []
    for resource_logs in request.resource_logs:
        resource = _attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                logs.append(  # noqa: PERF401 - three levels deep, a comprehension reads worse
                    ReceivedLog(
                        trace_id=record.trace_id.hex() or None,
                        span_id=record.span_id.hex() or None,
                        body=str(_value(record.body)),
                        severity=record.severity_text or SeverityNumber.Name(record.severity_number),
                        service_name=str(resource.get("service.name", "")),
                        attributes=_attributes(record.attributes),
                        resource=resource,
                    )
                )
    return logs


def _attributes(items: Any) -> dict[str, Any]:
    pairs: list[KeyValue] = list(items)
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)

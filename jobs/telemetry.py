"""OpenTelemetry, set up once per process: traces and logs over OTLP, trace ids in every log line.

Configuration is the standard ``OTEL_*`` environment, so a deployment points any
collector at the API and the workers without code changes:

- ``OTEL_SDK_DISABLED=true`` installs nothing; every ``Telemetry`` method is a no-op.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (base URL; ``/v1/traces`` and ``/v1/logs`` are
  appended for http) or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` (full URLs, used as they are).
  Without any, spans are still created, so tasks get trace ids and log lines
  carry them, but nothing leaves the process.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (and the per-signal ``..._TRACES_PROTOCOL``,
  ``..._LOGS_PROTOCOL``): ``http/protobuf`` (default) or ``grpc`` (needs
  ``opentelemetry-exporter-otlp-proto-grpc``).
- ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT`` (seconds, as the Python SDK
  reads it), ``..._COMPRESSION`` (``gzip``, ``deflate``, ``none``), each also per signal.
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_LOGS_EXPORTER``: ``otlp`` (default) or ``none``.
- ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override the resource
  this module builds (``service.name``, ``service.version``, ``service.instance.id``).

Settings this module does not read (sampler, batch sizes, TLS files) are read by
the SDK itself from ``os.environ``.

A collector that is down or slow must never hurt the service: spans and log
records are queued in memory and exported from the SDK's background threads
(a full queue drops, never blocks), each export gives up after a short timeout,
and ``Telemetry.shutdown()`` waits a bounded time however the exporter behaves.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.metadata
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import propagate, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk import version as sdk_version
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import format_span_id, format_trace_id
from opentelemetry.util.re import parse_env_headers
from structlog.typing import EventDict, WrappedLogger

from jobs.otlp_logs import OTLPLogHandler

_log = logging.getLogger(__name__)

Signal = Literal["traces", "logs"]
OtlpProtocol = Literal["http/protobuf", "grpc"]

# Short on purpose: an export runs on the SDK's thread, but a long timeout keeps
# a dead collector's batches (and shutdown) waiting; dropping telemetry is fine.
_DEFAULT_EXPORT_TIMEOUT_S = 3.0
_DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
_PACKAGE = "agentfarm"
_UNKNOWN_VERSION = "0.0.0+local"

_installed: Telemetry | None = None
_install_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """Where and how one signal is exported, resolved from the environment."""

    signal: Signal
    endpoint: str
    protocol: OtlpProtocol
    headers: Mapping[str, str]
    timeout_s: float
    compression: Literal["none", "gzip", "deflate"]


class Telemetry:
    """The providers this process set up, and how to flush and stop them.

    Built by ``setup_telemetry``; with the SDK disabled it holds no providers and
    every method does nothing, so callers never branch on configuration.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        logger_provider: LoggerProvider | None = None,
        traces_target: ExportTarget | None = None,
        logs_target: ExportTarget | None = None,
        redis_tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.redis_tracer_provider = redis_tracer_provider
        self.logger_provider = logger_provider
        self.traces_target = traces_target
        self.logs_target = logs_target
        self._handler: OTLPLogHandler | None = None
        self._stopped = False
        self._lock = threading.Lock()

    def instrument_redis(self) -> None:
        """Trace Redis commands made inside a trace (a task's request or job).

        arq polls Redis many times a second; those commands have no parent span
        and would each become a trace of their own, so Redis spans get a provider
        that samples only children of an existing span.
        """
        if self.redis_tracer_provider is not None:
            instrumentor = RedisInstrumentor()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=self.redis_tracer_provider)

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded at all (false with ``OTEL_SDK_DISABLED=true``)."""
        return self.tracer_provider is not None

    @property
    def resource(self) -> Resource | None:
        return self.tracer_provider.resource if self.tracer_provider is not None else None

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer from this set-up's provider; a no-op tracer when disabled."""
        if self.tracer_provider is None:
            return trace.NoOpTracer()
        return self.tracer_provider.get_tracer(name)

    def log_handler(self, level: int = logging.NOTSET) -> logging.Handler | None:
        """The stdlib handler exporting log records over OTLP, or None when logs are not exported.

        The same handler is returned on every call, so attaching it twice is easy to spot
        (``handler in root.handlers``) instead of doubling every record.
        """
        if self.logger_provider is None:
            return None
        with self._lock:
            if self._handler is None:
                self._handler = OTLPLogHandler(self.logger_provider, level=level)
            return self._handler

    def force_flush(self, timeout_s: float = _DEFAULT_SHUTDOWN_TIMEOUT_S) -> bool:
        """Export everything queued so far; False when it did not finish in ``timeout_s``."""
        providers: list[Callable[[], object]] = []
        if self.tracer_provider is not None:
            providers.append(self.tracer_provider.force_flush)
        if self.logger_provider is not None:
            providers.append(self.logger_provider.force_flush)
        return _run_bounded(providers, timeout_s, "force_flush")

    def shutdown(self, timeout_s: float = _DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Flush and stop exporting, waiting at most ``timeout_s``; safe to call twice.

        The SDK's own shutdown waits up to 30 s on a stuck exporter, so it runs on a
        helper thread that is abandoned (it is a daemon) once the time is up.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        steps: list[Callable[[], object]] = []
        if self._handler is not None:
            # Records logged after this would go to a stopped provider.
            logging.getLogger().removeHandler(self._handler)
        if self.tracer_provider is not None:
            steps.append(self.tracer_provider.shutdown)
        if self.logger_provider is not None:
            steps.append(self.logger_provider.shutdown)
        _run_bounded(steps, timeout_s, "shutdown")


def setup_telemetry(
    service_name: str,
    *,
    environ: Mapping[str, str] | None = None,
    set_global: bool = True,
) -> Telemetry:
    """Build the tracer and logger providers for this process from ``OTEL_*`` settings.

    With ``set_global`` (the default) the providers become OpenTelemetry's global
    ones, which the SDK allows once per process: a second call returns the first
    ``Telemetry`` unchanged. ``set_global=False`` builds independent providers
    (tests use it; nothing global changes). Raises ``ValueError`` naming the
    variable when a setting is invalid, so a misconfigured deployment fails at start.
    """
    global _installed  # noqa: PLW0603 - the SDK's globals are per process, so is the record of them
    env = os.environ if environ is None else environ
    if set_global:
        with _install_lock:
            if _installed is not None:
                return _installed
            telemetry = _build(service_name, env)
            _install(telemetry)
            # Not the SDK's own exit hooks: those wait up to 30 s each on a dead collector.
            atexit.register(telemetry.shutdown)
            _installed = telemetry
            return telemetry
    return _build(service_name, env)


def _build(service_name: str, env: Mapping[str, str]) -> Telemetry:
    if _flag(env, "OTEL_SDK_DISABLED"):
        return Telemetry()
    traces_target = export_target("traces", env)
    logs_target = export_target("logs", env)
    resource = build_resource(service_name, env)
    # One processor chain shared by the main provider and the Redis one (see instrument_redis).
    processors = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False, active_span_processor=processors)
    redis_tracer_provider = TracerProvider(
        resource=resource,
        shutdown_on_exit=False,
        active_span_processor=processors,
        sampler=ParentBased(root=ALWAYS_OFF),
    )
    if traces_target is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(traces_target)))
    logger_provider: LoggerProvider | None = None
    if logs_target is not None:
        logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        processor: LogRecordProcessor = BatchLogRecordProcessor(_log_exporter(logs_target))
        logger_provider.add_log_record_processor(processor)
    return Telemetry(
        tracer_provider=tracer_provider,
        logger_provider=logger_provider,
        traces_target=traces_target,
        logs_target=logs_target,
        redis_tracer_provider=redis_tracer_provider,
    )


def _install(telemetry: Telemetry) -> None:
    if telemetry.tracer_provider is not None:
        trace.set_tracer_provider(telemetry.tracer_provider)
    if telemetry.logger_provider is not None:
        set_logger_provider(telemetry.logger_provider)


def installed_telemetry() -> Telemetry | None:
    """The ``Telemetry`` that ``setup_telemetry`` made global in this process, if any."""
    return _installed


# --- configuration -----------------------------------------------------------------


def export_target(signal: Signal, env: Mapping[str, str]) -> ExportTarget | None:
    """Where ``signal`` goes per the environment, or None when it is not exported."""
    upper = signal.upper()
    exporter_var = f"OTEL_{upper}_EXPORTER"
    exporter = (_get(env, exporter_var) or "otlp").lower()
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise ValueError(f"{exporter_var}={exporter!r} is not supported: use 'otlp' or 'none'")

    protocol_var, protocol = _setting(env, signal, "PROTOCOL", "http/protobuf")
    if protocol not in ("http/protobuf", "grpc"):
        raise ValueError(f"{protocol_var}={protocol!r} is not supported: use 'http/protobuf' or 'grpc'")

    if (endpoint := _get(env, f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")) is None:
        if (base := _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")) is None:
            return None
        # OTLP/HTTP puts each signal on its own path; gRPC uses one address for all.
        endpoint = base if protocol == "grpc" else f"{base.rstrip('/')}/v1/{signal}"

    _, raw_headers = _setting(env, signal, "HEADERS", "")
    headers = dict(parse_env_headers(raw_headers, liberal=True))

    timeout_var, raw_timeout = _setting(env, signal, "TIMEOUT", str(_DEFAULT_EXPORT_TIMEOUT_S))
    try:
        timeout_s = float(raw_timeout)
    except ValueError:
        raise ValueError(f"{timeout_var}={raw_timeout!r} is not a number of seconds") from None
    if timeout_s <= 0:
        raise ValueError(f"{timeout_var}={raw_timeout!r} must be positive")

    compression_var, compression = _setting(env, signal, "COMPRESSION", "none")
    if compression not in ("none", "gzip", "deflate"):
        raise ValueError(f"{compression_var}={compression!r} is not supported: use 'gzip', 'deflate' or 'none'")

    if protocol == "grpc":
        _require_grpc(protocol_var)
    return ExportTarget(
        signal=signal,
        endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]  # checked against the Literal's values above
        headers=headers,
        timeout_s=timeout_s,
        compression=compression,  # type: ignore[arg-type]  # checked against the Literal's values above
    )


def _setting(env: Mapping[str, str], signal: Signal, name: str, default: str) -> tuple[str, str]:
    """The per-signal variable if set, else the general one, else ``default``; with the variable's name."""
    for variable in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        if (value := _get(env, variable)) is not None:
            return variable, value.lower() if name != "HEADERS" else value
    return f"OTEL_EXPORTER_OTLP_{name}", default


def build_resource(service_name: str, env: Mapping[str, str]) -> Resource:
    """The resource every span and log record carries.

    Precedence, lowest first: what the code knows (``service_name``, the package
    version, host:pid), then ``OTEL_RESOURCE_ATTRIBUTES``, then ``OTEL_SERVICE_NAME``,
    so an operator can always relabel a deployment without a release.
    """
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version.__version__,
        "service.name": service_name,
        "service.version": package_version(),
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
    }
    attributes.update(_parse_resource_attributes(_get(env, "OTEL_RESOURCE_ATTRIBUTES") or ""))
    if (name := _get(env, "OTEL_SERVICE_NAME")) is not None:
        attributes["service.name"] = name
    return Resource(attributes)


def package_version() -> str:
    """The installed agentfarm version; a recognisable placeholder when run from a bare checkout."""
    try:
        return importlib.metadata.version(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return _UNKNOWN_VERSION


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    # The spec's format: comma-separated key=value, values percent-encoded.
    attributes: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _log.warning("ignoring malformed OTEL_RESOURCE_ATTRIBUTES entry %r", item)
            continue
        attributes[key.strip()] = urllib.parse.unquote(value.strip())
    return attributes


def _get(env: Mapping[str, str], name: str) -> str | None:
    # The spec treats an empty variable as unset.
    value = env.get(name, "").strip()
    return value or None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return (_get(env, name) or "").lower() == "true"


def _require_grpc(variable: str) -> None:
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401, PLC0415 - probing only
    except ImportError:
        raise ValueError(
            f"{variable}=grpc needs the package opentelemetry-exporter-otlp-proto-grpc, which is not installed; "
            "install it or use http/protobuf"
        ) from None


# The OTLP exporter class of each signal and protocol (the gRPC ones are optional).
_EXPORTERS: dict[tuple[Signal, OtlpProtocol], str] = {
    ("traces", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http.trace_exporter:OTLPSpanExporter",
    ("logs", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http._log_exporter:OTLPLogExporter",
    ("traces", "grpc"): "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter",
    ("logs", "grpc"): "opentelemetry.exporter.otlp.proto.grpc._log_exporter:OTLPLogExporter",
}


def _exporter(target: ExportTarget) -> Any:
    module, _, name = _EXPORTERS[(target.signal, target.protocol)].partition(":")
    exporter_class = getattr(importlib.import_module(module), name)
    if target.protocol == "grpc":
        compression = _grpc_compression(target)
        headers: Mapping[str, str] = dict(target.headers)
    else:
        compression = Compression(target.compression)
        headers = target.headers
    return exporter_class(endpoint=target.endpoint, headers=headers, timeout=target.timeout_s, compression=compression)


def _span_exporter(target: ExportTarget) -> SpanExporter:
    exporter: SpanExporter = _exporter(target)
    return exporter


def _log_exporter(target: ExportTarget) -> LogRecordExporter:
    exporter: LogRecordExporter = _exporter(target)
    return exporter


def _grpc_compression(target: ExportTarget) -> Any:
    # Imported by name: grpc ships no type stubs, and it is only present with the gRPC exporter.
    grpc = importlib.import_module("grpc")
    return {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}[
        target.compression
    ]


def _run_bounded(steps: list[Callable[[], object]], timeout_s: float, what: str) -> bool:
    """Run ``steps`` in order on a daemon thread; give up waiting after ``timeout_s``."""
    if not steps:
        return True
    outcome: list[bool] = []

    def run() -> None:
        ok = True
        for step in steps:
            try:
                ok = step() is not False and ok
            except Exception:  # noqa: BLE001 - telemetry must not take the service down with it
                _log.warning("telemetry %s failed", what, exc_info=True)
                ok = False
        outcome.append(ok)

    thread = threading.Thread(target=run, name=f"otel-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _log.warning("telemetry %s did not finish within %.1f s; unsent telemetry is dropped", what, timeout_s)
        return False
    return outcome == [True]


# --- logs -----------------------------------------------------------------------------

# --- trace context --------------------------------------------------------------------


def add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add ``trace_id`` and ``span_id`` of the current span, if there is one.

    Put it after ``merge_contextvars`` in the shared chain so JSON lines on stderr
    can be joined with traces even where no collector receives the logs.
    """
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format_trace_id(span_context.trace_id)
        event_dict["span_id"] = format_span_id(span_context.span_id)
    return event_dict


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), or None outside a recorded trace."""
    span_context = trace.get_current_span().get_span_context()
    return format_trace_id(span_context.trace_id) if span_context.is_valid else None


def inject_traceparent(context: Context | None = None) -> str | None:
    """The W3C ``traceparent`` of ``context`` (default: the current one) to store with a job.

    None when there is no valid span, e.g. with the SDK disabled.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier.get("traceparent")


def extract_context(traceparent: str | None) -> Context:
    """The context a job's span continues from; an empty one (a new trace) when missing or malformed."""
    carrier = {"traceparent": traceparent} if traceparent else {}
    return propagate.extract(carrier)

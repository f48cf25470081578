"""OpenTelemetry, set up once per process: traces and logs over OTLP, trace ids in every log line.

The SDK reads the ``OTEL_*`` environment itself (exporter endpoints, headers, timeout,
compression, TLS; batch sizes; sampler; ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).
This module adds what the SDK leaves to whoever wires it up:

- ``OTEL_SDK_DISABLED=true`` installs nothing; every ``Telemetry`` method is a no-op.
- Each signal's exporter: ``OTEL_TRACES_EXPORTER``/``OTEL_LOGS_EXPORTER`` (``otlp``,
  ``none``, any installed one such as ``console``); ``otlp`` is the ``http/protobuf``
  (default) or ``grpc`` exporter per ``OTEL_EXPORTER_OTLP_[TRACES_|LOGS_]PROTOCOL``.
  With neither that variable nor an endpoint set, a signal is not exported, but spans
  still get trace ids (tasks and log lines carry them).
- The resource's defaults (service name, version, host:pid), which the environment overrides.
- Never hurting the service: the SDK's threads export from in-memory queues (full ones
  drop), exports give up soon, and ``Telemetry.shutdown()`` waits a bounded time.
- Redis spans only inside a trace, and the OTLP log handler (``jobs/otlp_logs.py``).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry import propagate, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.context import Context
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import format_span_id, format_trace_id
from structlog.typing import EventDict, WrappedLogger

from jobs.otlp_logs import OTLPLogHandler

_log = logging.getLogger(__name__)

Signal = Literal["traces", "logs"]

# The OTLP exporters' entry-point names.
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_DEFAULT_EXPORT_TIMEOUT_S = 3.0
_DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0

_installed: Telemetry | None = None
_install_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """The exporter one signal goes to, as the SDK built it from the environment."""

    exporter: SpanExporter | LogRecordExporter

    @property
    def endpoint(self) -> str | None:
        """Where the exporter sends, for the start-up log line (the SDK keeps it in a private field)."""
        endpoint = getattr(self.exporter, "_endpoint", None)
        return endpoint if isinstance(endpoint, str) else None


@dataclass(eq=False, kw_only=True)
class Telemetry:
    """The providers ``setup_telemetry`` built; with the SDK disabled none, and every method a no-op."""

    tracer_provider: TracerProvider | None = None
    logger_provider: LoggerProvider | None = None
    traces_target: ExportTarget | None = None
    logs_target: ExportTarget | None = None
    redis_tracer_provider: TracerProvider | None = None
    _handler: OTLPLogHandler | None = field(default=None, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def instrument_redis(self) -> None:
        """Trace Redis commands made inside a trace (a task's request or job).

        arq polls Redis many times a second, each command a trace of its own if
        traced: Redis spans get a provider that samples only children of a span.
        Without a trace exporter nothing is instrumented (spans nobody exports).
        """
        if self.redis_tracer_provider is not None and self.traces_target is not None:
            instrumentor = RedisInstrumentor()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=self.redis_tracer_provider)

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded at all (false with ``OTEL_SDK_DISABLED=true``)."""
        return self.tracer_provider is not None

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer from this set-up's provider; a no-op tracer when disabled."""
        return trace.NoOpTracer() if self.tracer_provider is None else self.tracer_provider.get_tracer(name)

    def log_handler(self, level: int = logging.NOTSET) -> logging.Handler | None:
        """The stdlib handler exporting log records over OTLP (None when logs are not exported).

        Always the same one, so attaching it twice is easy to spot (``handler in root.handlers``).
        """
        if self.logger_provider is None:
            return None
        with self._lock:
            if self._handler is None:
                self._handler = OTLPLogHandler(self.logger_provider, level=level)
            return self._handler

    def force_flush(self, timeout_s: float = _DEFAULT_SHUTDOWN_TIMEOUT_S) -> bool:
        """Export everything queued so far; False when it did not finish in ``timeout_s``."""
        return _run_bounded([p.force_flush for p in self._providers()], timeout_s, "force_flush")

    def shutdown(self, timeout_s: float = _DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Flush and stop exporting, waiting at most ``timeout_s`` (the SDK would wait 30 s); safe twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._handler is not None:
            # Records logged after this would go to a stopped provider.
            logging.getLogger().removeHandler(self._handler)
        _run_bounded([p.shutdown for p in self._providers()], timeout_s, "shutdown")

    def _providers(self) -> list[TracerProvider | LoggerProvider]:
        return [p for p in (self.tracer_provider, self.logger_provider) if p is not None]


def setup_telemetry(service_name: str, *, set_global: bool = True) -> Telemetry:
    """Build the tracer and logger providers for this process from the ``OTEL_*`` environment.

    With ``set_global`` (the default) they become OpenTelemetry's global providers,
    which the SDK allows once per process: a second call returns the first
    ``Telemetry``. ``set_global=False`` builds independent ones (tests). An unknown
    or missing exporter or protocol raises ``ValueError`` naming the variable.
    """
    global _installed  # noqa: PLW0603 - the SDK's globals are per process, so is the record of them
    if not set_global:
        return _build(service_name)
    with _install_lock:
        if _installed is None:
            _installed = _build(service_name)
            if _installed.tracer_provider is not None:
                trace.set_tracer_provider(_installed.tracer_provider)
            if _installed.logger_provider is not None:
                set_logger_provider(_installed.logger_provider)
            # Not the SDK's own exit hooks: those wait up to 30 s each on a dead collector.
            atexit.register(_installed.shutdown)
        return _installed


def _build(service_name: str) -> Telemetry:
    if _env(OTEL_SDK_DISABLED) == "true":
        return Telemetry()
    span_exporter: SpanExporter | None = _exporter("traces")
    log_exporter: LogRecordExporter | None = _exporter("logs")
    resource = _resource(service_name)
    # One processor chain shared by the main provider and the Redis one (see instrument_redis).
    processors = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    # Spans nobody exports are not recorded (≈ 4 ms of CPU per job, measured); they still carry
    # trace ids, so log lines and the traceparent stored with a job stay correlated.
    tracer_provider = TracerProvider(
        resource=resource,
        shutdown_on_exit=False,
        active_span_processor=processors,
        sampler=None if span_exporter is not None else ALWAYS_OFF,
    )
    redis_tracer_provider = TracerProvider(
        resource=resource,
        shutdown_on_exit=False,
        active_span_processor=processors,
        sampler=ParentBased(root=ALWAYS_OFF),
    )
    telemetry = Telemetry(tracer_provider=tracer_provider, redis_tracer_provider=redis_tracer_provider)
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        telemetry.traces_target = ExportTarget(span_exporter)
    if log_exporter is not None:
        telemetry.logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        telemetry.logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        telemetry.logs_target = ExportTarget(log_exporter)
    return telemetry


def _exporter(signal: Signal) -> Any:
    """The exporter the environment names for ``signal`` (None: not exported), configured by the SDK from it.

    Looked up by entry point, as the SDK's own configurator does; the group is per signal.
    """
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    name = _env(variable) or ("otlp" if _otlp_variable(signal, "ENDPOINT") else "none")
    if name == "none":
        return None
    if name == "otlp":
        variable = _otlp_variable(signal, "PROTOCOL") or "OTEL_EXPORTER_OTLP_PROTOCOL"
        protocol = _env(variable) or "http/protobuf"  # the spec's default (the SDK's configurator picks grpc)
        if protocol not in _OTLP_BY_PROTOCOL:
            raise ValueError(f"{variable}={protocol!r} is not supported: use 'http/protobuf' or 'grpc'")
        name = _OTLP_BY_PROTOCOL[protocol]
    try:
        (entry_point,) = importlib.metadata.entry_points(group=f"opentelemetry_{signal}_exporter", name=name)
        exporter_class = entry_point.load()
    except (ValueError, ImportError):
        needs = " (it comes with opentelemetry-exporter-otlp-proto-grpc)" if name == "otlp_proto_grpc" else ""
        raise ValueError(f"{variable}: no {signal} exporter {name!r} is installed{needs}") from None
    if name not in _OTLP_BY_PROTOCOL.values() or _otlp_variable(signal, "TIMEOUT"):
        return exporter_class()
    # The OTLP exporters default to 10 s per export, retries included: a dead collector
    # would hold the export thread (and every flush) that long per batch. An argument
    # beats the environment in the SDK's exporters, hence passed only when none is set.
    return exporter_class(timeout=_DEFAULT_EXPORT_TIMEOUT_S)


def _otlp_variable(signal: Signal, setting: str) -> str | None:
    """Which of ``OTEL_EXPORTER_OTLP_{SIGNAL}_{setting}`` and ``OTEL_EXPORTER_OTLP_{setting}`` is set, that first."""
    names = (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{setting}", f"OTEL_EXPORTER_OTLP_{setting}")
    return next((name for name in names if _env(name)), None)


def _resource(service_name: str) -> Resource:
    """What the code knows (name, version, host:pid); ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME`` win."""
    defaults = {
        "service.name": service_name,
        "service.version": package_version(),
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
    }
    # Resource.create() lets its argument win over the environment, so the SDK's
    # environment detector is merged once more on top: an operator can always relabel.
    return Resource.create(defaults).merge(OTELResourceDetector().detect())


def package_version() -> str:
    """The installed agentfarm version; a recognisable placeholder when run from a bare checkout."""
    try:
        return importlib.metadata.version("agentfarm")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+local"


def _env(name: str) -> str:
    # As the SDK reads them: an empty variable is unset; names and values are lower case.
    return os.environ.get(name, "").strip().lower()


def _run_bounded(steps: list[Callable[[], object]], timeout_s: float, what: str) -> bool:
    """Run ``steps`` in order on a daemon thread; False when one fails or they outlast ``timeout_s``."""
    failures: list[Callable[[], object]] = []

    def run() -> None:
        for step in steps:
            try:
                if step() is False:
                    failures.append(step)
            except Exception:  # noqa: BLE001 - telemetry must not take the service down with it
                _log.warning("telemetry %s failed", what, exc_info=True)
                failures.append(step)

    thread = threading.Thread(target=run, name=f"otel-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _log.warning("telemetry %s did not finish within %.1f s; unsent telemetry is dropped", what, timeout_s)
        return False
    return not failures


def add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current span's ``trace_id`` and ``span_id``, if there is one.

    So JSON lines on stderr join traces even where no collector receives the logs.
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
    """The W3C ``traceparent`` of ``context`` (default: the current one) to store with a job; None without a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier.get("traceparent")


def extract_context(traceparent: str | None) -> Context:
    """The context a job's span continues from; an empty one (a new trace) when missing or malformed."""
    carrier = {"traceparent": traceparent} if traceparent else {}
    return propagate.extract(carrier)

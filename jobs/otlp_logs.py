"""Exporting stdlib (and so structlog) log records over OTLP, with the caller's trace context."""

from __future__ import annotations

import logging
import sys
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.context import get_current
from opentelemetry.sdk._logs import LoggerProvider

# Attributes every stdlib LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# structlog keys that are already a field of the OTLP record (or are internal).
_EVENT_FIELDS = frozenset({"event", "level", "timestamp", "logger", "trace_id", "span_id", "exc_info", "stack_info"})
# OpenTelemetry's display names for two stdlib levels.
_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


class OTLPLogHandler(logging.Handler):
    """Sends stdlib log records, structlog's included, to an OpenTelemetry ``LoggerProvider``.

    Written here rather than taking ``opentelemetry.sdk._logs.LoggingHandler``, which
    1.45 deprecates (it moves to ``opentelemetry-instrumentation-logging``) and which
    does not know structlog: it would export the event dict as the body and the
    bound logger object as an attribute. Here a structlog record becomes body =
    the event, attributes = its other keys. The trace context is the caller's
    current one, so a line logged inside a span carries its trace and span ids.
    """

    def __init__(self, logger_provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level=level)
        self._provider = logger_provider

    def emit(self, record: logging.LogRecord) -> None:
        # The exporter logs its own failures; exporting those would feed a dead
        # collector's errors back into the queue bound for it.
        if record.name.startswith("opentelemetry"):
            return
        try:
            body, attributes, exception = _translate(record)
            self._provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                context=get_current(),
                severity_number=_severity_number(record.levelno),
                severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
                body=body,
                attributes=attributes,
                exception=exception,
            )
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)

    def flush(self) -> None:
        # Flushing is Telemetry.force_flush/shutdown's job (bounded there); the
        # logging module calls flush at exit and must not block on a collector.
        return


def _translate(record: logging.LogRecord) -> tuple[str, dict[str, Any], BaseException | None]:
    attributes: dict[str, Any] = {}
    exception = _exception_of(record.exc_info)
    if isinstance(record.msg, dict):  # structlog via ProcessorFormatter.wrap_for_formatter
        event: dict[str, Any] = record.msg
        body = str(event.get("event", ""))
        for key, value in event.items():
            if key not in _EVENT_FIELDS and not key.startswith("_"):
                attributes[key] = _attribute_value(value)
        if exception is None:
            exception = _exception_of(event.get("exc_info"))
    else:
        body = record.getMessage()
    for key, value in record.__dict__.items():
        if key not in _RECORD_FIELDS and not key.startswith("_") and key not in attributes:
            attributes[key] = _attribute_value(value)
    attributes.setdefault("thread.name", record.threadName or "")
    return body, attributes, exception


def _exception_of(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    if exc_info is True:
        # structlog's log.exception()/exc_info=True: the exception being handled right now.
        return sys.exc_info()[1]
    return None


def _attribute_value(value: object) -> Any:
    # OTLP attributes take primitives and homogeneous lists of them; anything else
    # (UUIDs, datetimes, dicts) is exported as its text rather than dropped.
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return str(value)


def _severity_number(levelno: int) -> SeverityNumber:
    # The stdlib levels' OTLP equivalents; the SDK's own table is private.
    if levelno >= logging.CRITICAL:
        return SeverityNumber.FATAL
    if levelno >= logging.ERROR:
        return SeverityNumber.ERROR
    if levelno >= logging.WARNING:
        return SeverityNumber.WARN
    if levelno >= logging.INFO:
        return SeverityNumber.INFO
    if levelno >= logging.DEBUG:
        return SeverityNumber.DEBUG
    return SeverityNumber.UNSPECIFIED

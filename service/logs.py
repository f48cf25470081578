"""structlog, configured once per process: readable on a terminal, JSON elsewhere.

Standard-library loggers (crewai, arq, hypercorn, httpx) go through the same
renderer; the chatty ones are turned down so a job's own lines stand out.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from jobs.telemetry import add_trace_context

# Third-party loggers that speak too much at INFO for a service log.
_QUIET = {
    "crewai": logging.WARNING,
    "crewai_core": logging.WARNING,
    "crewai.llms.base_llm": logging.ERROR,  # "approximate token count" on every call
    "LiteLLM": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "openai": logging.WARNING,
    "arq": logging.WARNING,
    "hypercorn.access": logging.WARNING,
    "opentelemetry": logging.WARNING,
}


class _RootChatter(logging.Filter):
    """Drops INFO lines that libraries log through the root logger on every call.

    crewai's OpenAI provider logs ``OpenAI API usage: ...`` with ``logging.info`` (the
    root logger, so no named logger can be turned down): it counts as WARNING here.
    """

    PREFIXES = ("OpenAI API usage",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or record.levelno >= logging.WARNING or not isinstance(record.msg, str):
            return True
        return not record.msg.startswith(self.PREFIXES)


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging to stderr in one format."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json_output else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_RootChatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet_level, logging.getLevelName(level)))


def _identity(_: Any, __: str, event_dict: Any) -> Any:
    return event_dict

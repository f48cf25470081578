"""Errors the API answers with, and the one function that turns any error into problem+json."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.schemas import FieldProblem, Problem

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


class ApiError(Exception):
    """Base of errors the API raises on purpose; each maps to one status."""

    status = 500
    title = "Internal Server Error"

    def __init__(
        self, detail: str, *, errors: list[FieldProblem] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class ClientError(ApiError):
    """The request cannot be served as sent; the client must change it."""

    status = 400
    title = "Bad Request"


class InvalidInput(ClientError):
    """A parameter is well-formed but not acceptable (for example an unknown cursor)."""

    status = 400
    title = "Invalid Input"


class NotFound(ClientError):
    """No such resource for this caller (other tenants' tasks look the same as missing ones)."""

    status = 404
    title = "Not Found"


class Conflict(ClientError):
    """The resource is in a state that does not allow this request."""

    status = 409
    title = "Conflict"


class Unprocessable(ClientError):
    """The request is well-formed but contradicts an earlier one (an Idempotency-Key reused)."""

    status = 422
    title = "Unprocessable Content"


class RateLimited(ClientError):
    """Too many submissions for this kind and API key; ``Retry-After`` says when to try again."""

    status = 429
    title = "Too Many Requests"


class DependencyDown(ApiError):
    """Redis (or another dependency) cannot be reached; retrying later may work."""

    status = 503
    title = "Service Unavailable"


def _problem(
    status: int,
    title: str,
    detail: str,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    return Response(
        Problem(title=title, status=status, detail=detail, errors=errors),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _validation_errors(extra: Any) -> list[FieldProblem]:
    items = extra if isinstance(extra, list) else [extra] if extra else []
    problems = []
    for item in items:
        if isinstance(item, dict):
            key = item.get("key")
            unknown = _NAMED_FIELD.search(str(item.get("message", "")))
            if unknown:  # Litestar names the whole body ("data"); name the offending field instead
                key = unknown.group(1)
            problems.append(
                FieldProblem(
                    field=str(key) if key else None,
                    message=str(item.get("message", "")),
                    source=str(item["source"]) if item.get("source") else None,
                )
            )
    return problems


def to_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Map any exception to problem+json; only our own faults become a 500."""
    if isinstance(exc, ApiError):
        return _problem(exc.status, exc.title, exc.detail, exc.errors, exc.headers)
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc.extra)
        detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors) or exc.detail
        return _problem(400, "Invalid Request", detail, errors)
    if isinstance(exc, HTTPException):
        return _problem(exc.status_code, _reason(exc.status_code), exc.detail, None, exc.headers)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        log.error("redis_unavailable", path=request.url.path, error=str(exc))
        return _problem(
            503,
            "Service Unavailable",
            "the task store (Redis) is unreachable; retry shortly",
            headers={"Retry-After": "5"},
        )
    log.exception("unhandled_error", path=request.url.path)
    return _problem(
        HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error", "an unexpected error occurred; it was logged"
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"

"""Errors the API answers with, and the one function that turns any error into problem+json."""

from __future__ import annotations

import re
from enum import Enum
from http import HTTPStatus
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.schemas import FieldProblem, Problem
from service.validation import BodyNotDecodable, BodyProblems, UnsupportedBody, explain, missing_body

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
# One title for every 400, whichever layer found the problem.
INVALID = "Invalid Request"
# Failures to decode what a client sent (body, query string): never our fault, always a 400.
_DECODE_FAILURES = (UnicodeDecodeError, BodyNotDecodable)


class ApiError(Exception):
    """Base of errors the API raises on purpose; each maps to one status."""

    status = 500
    title = "Internal Server Error"
    type = "about:blank"  # a URI naming the kind of problem, for errors a client may want to tell apart

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
    title = INVALID


class InvalidInput(ClientError):
    """A parameter is well-formed but not acceptable (for example an unknown cursor)."""

    status = 400
    title = INVALID


class NotFound(ClientError):
    """No such resource for this caller (other tenants' tasks look the same as missing ones)."""

    status = 404
    title = "Not Found"


class NotAcceptable(ClientError):
    """The client asked (``Accept`` or ``format``) for a representation this resource does not have."""

    status = 406
    title = "Not Acceptable"


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
    type_: str = "about:blank",
) -> Response[Problem]:
    return Response(
        Problem(title=title, status=status, detail=detail, errors=errors, type=type_),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _invalid(errors: list[FieldProblem], fallback: str) -> Response[Problem]:
    detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors) or fallback
    return _problem(400, INVALID, detail, errors or None)


def _source(value: Any) -> str | None:
    if not value:
        return None
    return str(value.value if isinstance(value, Enum) else value)  # ParamType.QUERY -> "query"


def _validation_errors(request: Request[Any, Any, Any], extra: Any) -> list[FieldProblem]:
    handler = request.scope.get("route_handler")
    params = handler.parsed_fn_signature.parameters if handler is not None else {}
    items = extra if isinstance(extra, list) else [extra] if extra else []
    problems = []
    for item in items:
        if not isinstance(item, dict):
            continue
        key = item.get("key")
        source = _source(item.get("source"))
        if key == "data" and source == "body":  # no body at all: say what the body should be
            data = handler.parsed_data_field if handler is not None else None
            problems.append(missing_body(data.annotation if data is not None else None))
            continue
        message = str(item.get("message", ""))
        unknown = _NAMED_FIELD.search(message)
        if unknown:  # Litestar names the whole body ("data"); name the offending field instead
            key = unknown.group(1)
        if key in params:
            message = explain(message, params[key].annotation)
            definition = params[key].kwarg_definition
            if isinstance(definition, HeaderParameter) and definition.name:  # its name on the wire
                key, source = definition.name, "header"
        problems.append(FieldProblem(field=str(key) if key else None, message=message, source=source))
    return problems


def to_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Map any exception to problem+json; only our own faults become a 500."""
    client = _client_problem(request, exc)
    if client is not None:
        return client
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


def _client_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem] | None:
    """The answer to an error the request caused (or that we raised on purpose), else None."""
    if isinstance(exc, ApiError):
        return _problem(exc.status, exc.title, exc.detail, exc.errors, exc.headers, exc.type)
    if isinstance(exc, (BodyProblems, UnsupportedBody, *_DECODE_FAILURES)):
        return _body_problem(exc)
    if isinstance(exc, ValidationException):
        return _invalid(_validation_errors(request, exc.extra), exc.detail)
    if isinstance(exc, HTTPException):
        return _http_problem(request, exc)
    return None


def _body_problem(exc: Exception) -> Response[Problem]:
    if isinstance(exc, BodyProblems):
        return _invalid(exc.problems, "the request body is not valid")
    if isinstance(exc, UnsupportedBody):
        return _problem(415, "Unsupported Media Type", str(exc), headers={"Accept-Post": "application/json"})
    detail = str(exc) if isinstance(exc, BodyNotDecodable) else f"request: cannot be decoded ({exc})"
    return _problem(400, INVALID, detail, [FieldProblem(field=None, message=detail, source="body")])


def _http_problem(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status, detail = exc.status_code, exc.detail
    if status == 413:
        handler = request.scope.get("route_handler")
        limit = handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
        detail = f"request body is larger than the limit of {limit} bytes" if limit else "request body is too large"
    elif status == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"no such resource: {request.url.path} (the API is described at /schema)"
    elif status == 405:
        allowed = (exc.headers or {}).get("allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    title = INVALID if status == 400 else _reason(status)
    return _problem(status, title, detail, None, exc.headers)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"

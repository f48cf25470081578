"""Request bodies checked field by field, so a client learns about every invalid field at once.

msgspec stops at the first error. When a body does not convert, each field is
converted on its own against the struct's annotation, and every problem is
reported with the allowed values of enum fields.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException

from service.schemas import FieldProblem

_AT_PATH = re.compile(r"\s+- at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^`(?P<field>\w+)` ")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


class BodyProblems(Exception):
    """The request body is not acceptable; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


class BodyNotDecodable(Exception):
    """The body is not JSON this API can read (invalid UTF-8, malformed, nested too deep)."""


class UnsupportedBody(Exception):
    """The body is sent as a media type other than JSON."""


class ApiRequest(Request[Any, Any, Any]):
    """A request whose JSON body is decoded and checked before Litestar converts it."""

    async def json(self) -> Any:
        media_type = self.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedBody(f"Content-Type: the body must be 'application/json', not {media_type!r}")
        try:
            value = await super().json()
        except (SerializationException, UnicodeDecodeError, RecursionError, ValueError) as exc:
            raise BodyNotDecodable(_decode_reason(exc)) from None
        target = self.route_handler.parsed_data_field
        if target is not None and _is_struct(target.annotation):
            problems = body_problems(target.annotation, value)
            if problems:
                raise BodyProblems(problems)
        return value


def _is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)


def _decode_reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"request body: not valid UTF-8 (byte {exc.start}); send JSON encoded as UTF-8"
    if isinstance(exc, RecursionError):
        return "request body: JSON nested too deeply to read; send a flat JSON object"
    return f"request body: not valid JSON ({exc}); send a JSON object"


def describe(struct_type: type[Any]) -> str:
    """``a JSON object with the fields topic (required), depth, language``."""
    fields = msgspec.structs.fields(struct_type)
    names = [f"{f.encode_name} (required)" if f.required else f.encode_name for f in fields]
    return "a JSON object with the fields " + ", ".join(names)


def missing_body(struct_type: type[Any] | None) -> FieldProblem:
    expected = describe(struct_type) if struct_type is not None else "a JSON object"
    return FieldProblem(field=None, message=f"request body: expected {expected}; got an empty body", source="body")


def allowed_values(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a Literal (also inside ``Optional``/``Annotated``) in declared order, else None."""
    origin = get_origin(annotation)
    if origin is Literal:
        return get_args(annotation)
    if origin is Annotated:
        return allowed_values(get_args(annotation)[0])
    if origin in (Union, UnionType):
        found = [v for arg in get_args(annotation) if (v := allowed_values(arg)) is not None]
        return found[0] if found else None
    return None


def explain(message: str, annotation: Any) -> str:
    """msgspec's message without its ``- at `$...``` suffix, with the allowed values of an enum."""
    message = _AT_PATH.sub("", message)
    values = allowed_values(annotation)
    if values is not None and message.startswith("Invalid enum value"):
        got = message.removeprefix("Invalid enum value").strip()
        return f"must be one of {', '.join(repr(v) for v in values)} (got {got})"
    return message


def body_problems(struct_type: type[Any], value: Any) -> list[FieldProblem]:
    """Every problem of ``value`` as a body of ``struct_type``; empty if it converts."""
    try:
        msgspec.convert(value, struct_type, strict=False)
    except msgspec.ValidationError as exc:
        first = str(exc)
    else:
        return []
    if not isinstance(value, dict):
        got = _JSON_TYPES.get(type(value), "a number")
        return [FieldProblem(field=None, message=f"request body: expected {describe(struct_type)}; got {got}")]
    fields = msgspec.structs.fields(struct_type)
    known = {f.encode_name for f in fields}
    problems = [
        FieldProblem(field=str(key), message=f"unknown field; the fields are {', '.join(sorted(known))}", source="body")
        for key in value
        if key not in known
    ]
    for field in fields:
        if field.encode_name not in value:
            if field.required:
                problems.append(FieldProblem(field=field.encode_name, message="required field missing", source="body"))
            continue
        try:
            msgspec.convert(value[field.encode_name], field.type, strict=False)
        except msgspec.ValidationError as exc:
            problems.append(FieldProblem(field=field.encode_name, message=explain(str(exc), field.type), source="body"))
    if not problems:  # each field is fine alone: a check across the struct (__post_init__) failed
        named = _NAMED.match(first)
        path = _AT_PATH.search(first)
        field_name = named.group("field") if named else (path.group("path").lstrip(".") if path else None)
        problems.append(FieldProblem(field=field_name or None, message=_AT_PATH.sub("", first), source="body"))
    return problems

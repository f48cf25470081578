"""Structs whose declared bounds hold however they are built.

msgspec checks ``Annotated[..., Meta(ge=..., le=...)]`` constraints when it
decodes or converts, not when a struct is constructed directly; a settings
section built in code (``LLMConfig(max_iter=100)``) would slip past them. A
``Checked`` struct re-validates itself once on construction, so each bound is
declared once, in the type, and enforced everywhere.
"""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import urlsplit

import msgspec

_validating: ContextVar[bool] = ContextVar("agentfarm_validating", default=False)


class Checked(msgspec.Struct, frozen=True, kw_only=True):
    """Base of settings sections: construction fails with ``ValueError`` on a value outside its bounds."""

    def __post_init__(self) -> None:
        if _validating.get():
            return  # the copy msgspec builds below, or a nested section: checked by the outer call
        token = _validating.set(True)
        try:
            msgspec.convert(msgspec.to_builtins(self), type(self))
        except msgspec.ValidationError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None
        finally:
            _validating.reset(token)


def env(parse: object, expected: str, *, secret: bool = False) -> msgspec.Meta:
    """How the settings loader reads a variable of this field: its parser, what it expects, whether it is secret."""
    return msgspec.Meta(extra={"parse": parse, "expected": expected, "secret": secret})


def http_url(raw: str) -> str:
    """``raw`` when it is an http(s) URL with a host; ``ValueError`` otherwise."""
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(raw)
    return raw

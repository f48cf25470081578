"""Bearer API keys: each key is a tenant, and a tenant sees only its own tasks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware

from jobs.settings import ApiKey, RateLimit

# Paths that answer without a tenant key: probes, metrics, the API description, and
# the operator endpoints (which check operator keys themselves).
PUBLIC_PATHS = ["^/health/", "^/metrics", "^/schema", "^/v1/admin/"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a tenant, with its key's own rate limit if it has one."""

    tenant: str
    rate_limit: RateLimit | None = None


def caller_for(keys: tuple[ApiKey, ...], presented: str) -> Caller | None:
    """The caller owning ``presented``, comparing digests in constant time against every key."""
    digest = ApiKey.digest(presented)
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.key_sha256, digest):
            found = key
    return None if found is None else Caller(found.tenant, found.rate_limit)


def is_operator(admin_digests: tuple[str, ...], presented: str) -> bool:
    digest = ApiKey.digest(presented)
    return any([hmac.compare_digest(d, digest) for d in admin_digests])  # noqa: C419 - compare all, in constant time


def bearer_token(header: str) -> str | None:
    scheme, _, presented = header.partition(" ")
    return presented.strip() if scheme.lower() == "bearer" and presented.strip() else None


class BearerKeyMiddleware(AbstractAuthenticationMiddleware):
    """Sets ``request.user`` to the ``Caller``, or answers 401."""

    def __init__(self, app: Any, keys: tuple[ApiKey, ...], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.keys = keys

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        presented = bearer_token(connection.headers.get("authorization", ""))
        if presented is None:
            raise NotAuthorizedException(
                "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )
        caller = caller_for(self.keys, presented)
        if caller is None:
            raise NotAuthorizedException(
                "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return AuthenticationResult(user=caller, auth=None)


def bearer_auth(keys: tuple[ApiKey, ...]) -> DefineMiddleware:
    return DefineMiddleware(BearerKeyMiddleware, keys=keys, exclude=PUBLIC_PATHS)

"""Bearer API keys: each key is a tenant, and a tenant sees only its own tasks."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware

from jobs.settings import ApiKey

# Paths that answer without a key: probes, metrics and the API description.
PUBLIC_PATHS = ["^/health/", "^/metrics", "^/schema"]


def tenant_for(keys: tuple[ApiKey, ...], presented: str) -> str | None:
    """The tenant owning ``presented``, comparing digests in constant time against every key."""
    digest = ApiKey.digest(presented)
    tenant: str | None = None
    for key in keys:
        if hmac.compare_digest(key.key_sha256, digest):
            tenant = key.tenant
    return tenant


class BearerKeyMiddleware(AbstractAuthenticationMiddleware):
    """Sets ``request.user`` to the caller's tenant, or answers 401."""

    def __init__(self, app: Any, keys: tuple[ApiKey, ...], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.keys = keys

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise NotAuthorizedException(
                "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )
        tenant = tenant_for(self.keys, presented.strip())
        if tenant is None:
            raise NotAuthorizedException(
                "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return AuthenticationResult(user=tenant, auth=None)


def bearer_auth(keys: tuple[ApiKey, ...]) -> DefineMiddleware:
    return DefineMiddleware(BearerKeyMiddleware, keys=keys, exclude=PUBLIC_PATHS)

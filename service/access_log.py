"""One log line per HTTP request, with its outcome and timing.

``log_request`` is called by the app-wide HTTP observer (``service.observability``),
which sees every request: refused by auth, unknown routes and all.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar.types import Scope

from service.auth import Caller

log = structlog.get_logger("agentfarm.http")

# Probes and scrapes would drown the requests that matter.
_SKIP = ("/health/", "/metrics")


def log_request(scope: Scope, status: int, duration_s: float) -> None:
    """The ``http_request`` line: method, path, real status, duration and, once authenticated, the tenant."""
    path = str(scope.get("path", ""))
    if path.startswith(_SKIP):
        return
    fields: dict[str, Any] = {
        "method": scope.get("method", ""),
        "path": path,
        "status": status,
        "duration_ms": round(duration_s * 1000, 1),
    }
    user = scope.get("user")
    if isinstance(user, Caller):
        fields["tenant"] = user.tenant
    log.info("http_request", **fields)

"""The web page at ``/``: plain HTML, CSS and JavaScript modules from ``service/web/``, no build step.

The page is public (it holds no data); everything it shows comes from the API
with the key the user types, sent in the ``Authorization`` header. Its
Content-Security-Policy allows only its own files: no inline script or style,
nothing from another host, no framing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader, MutableScopeHeaders
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS_PATH = "/web"
PAGE_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Every response, errors included: no MIME sniffing, no Referer sent on from anything served here.
_ALWAYS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
_PAGE = {"content-security-policy": PAGE_CSP, "x-frame-options": "DENY"}  # X-Frame-Options: pre-CSP browsers
# API answers are data, never pages: nothing in one may run or load, or be framed. (The report's HTML export
# sets its own policy; the Swagger page under /schema needs its inline script and is left as it is.)
_DATA = {"content-security-policy": "default-src 'none'; frame-ancestors 'none'"}


async def security_headers(message: Message, scope: Scope) -> None:
    """Litestar ``before_send`` hook: the security headers on every response, also errors and static files."""
    if message["type"] != "http.response.start":
        return
    path: str = scope.get("path", "")
    extra = _PAGE if path == "/" or path.startswith(f"{ASSETS_PATH}/") else {} if path.startswith("/schema") else _DATA
    headers = MutableScopeHeaders.from_message(message)
    for name, value in {**_ALWAYS, **extra}.items():
        if name not in headers:
            headers[name] = value


# Revalidate on every load, so a new release's page and script arrive together.
_REVALIDATE = CacheControlHeader(no_cache=True)
_PUBLIC = {"exclude_from_auth": True}


@cache
def _index() -> bytes:
    return (WEB_DIR / "index.html").read_bytes()


@get("/", include_in_schema=False, opt=_PUBLIC, cache_control=_REVALIDATE)
async def index() -> Response[bytes]:
    """The page itself."""
    return Response(_index(), media_type="text/html")


def web_routes() -> Router:
    """``GET /`` and the page's files under ``/web/`` (their security headers: ``security_headers``)."""
    assets = create_static_files_router(
        path=ASSETS_PATH,
        directories=[WEB_DIR],
        include_in_schema=False,
        opt=_PUBLIC,
        cache_control=_REVALIDATE,
    )
    return Router(path="/", route_handlers=[index, assets], include_in_schema=False)

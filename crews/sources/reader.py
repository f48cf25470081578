"""Reading one page safely: public addresses only, every redirect re-checked, size and time capped.

Each hop is checked by ``crews.netguard`` (http/https only; loopback, private,
link-local, multicast, reserved addresses refused unless ``allow_private``) and
the connection goes to the address that was checked. Redirects are followed by
hand, each target checked again. The body is streamed and cut at
``max_bytes``; the whole read, redirects included, has ``timeout_s``. The
client sends no cookies or credentials and does not use a proxy (a proxy would
resolve the host itself and defeat the address check).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import metadata
from urllib.parse import urljoin, urlsplit

import httpx

from crews import netguard
from crews.sources.config import FetchConfig
from crews.sources.extract import extract

_REDIRECTS = {301, 302, 303, 307, 308}
_TYPES = ("text/html", "application/xhtml+xml")


def _version() -> str:
    try:
        return metadata.version("agentfarm")
    except metadata.PackageNotFoundError:
        return "dev"


USER_AGENT = f"AgentFarm/{_version()} (+report research)"


class FetchFailed(Exception):
    """A page could not be read; ``reason`` is a short label (metrics), the message says more."""

    def __init__(self, url: str, reason: str, detail: str) -> None:
        super().__init__(f"{detail}: {url}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Page:
    """A page that was read: where it ended up (after redirects), its title and main text."""

    url: str
    title: str
    text: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def page_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, headers={"User-Agent": USER_AGENT})


async def read_page(
    client: httpx.AsyncClient, url: str, config: FetchConfig, *, resolve: netguard.Resolver = None
) -> Page:
    """Fetch ``url`` and extract its main text, or raise ``FetchFailed``."""
    try:
        async with asyncio.timeout(config.timeout_s):
            final_url, body = await _fetch(client, url, config, resolve)
    except TimeoutError:
        raise FetchFailed(url, "timeout", f"no page within {config.timeout_s:g} s") from None
    extracted = await asyncio.to_thread(extract, body, final_url)
    if extracted is None:
        raise FetchFailed(url, "no_text", "no main text found")
    title = extracted.title or urlsplit(final_url).hostname or final_url
    return Page(url=final_url, title=title, text=extracted.text)


async def _fetch(
    client: httpx.AsyncClient, url: str, config: FetchConfig, resolve: netguard.Resolver
) -> tuple[str, bytes]:
    current = url
    for _ in range(config.max_redirects + 1):
        try:
            target = await netguard.check(current, allow_private=config.allow_private, resolve=resolve)
        except netguard.Refused as exc:
            raise FetchFailed(current, "refused", exc.reason) from None
        pinned, host_headers, extensions = target.pinned()
        headers = {**host_headers, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"}
        request = client.build_request("GET", pinned, headers=headers)
        request.extensions.update(extensions)
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise FetchFailed(current, "connection", f"cannot connect ({type(exc).__name__})") from None
        try:
            if response.status_code in _REDIRECTS and response.headers.get("location"):
                current = urljoin(current, response.headers["location"])
                continue
            if response.status_code != 200:
                raise FetchFailed(current, "http_status", f"HTTP {response.status_code}")
            kind = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
            if kind not in _TYPES:
                raise FetchFailed(current, "not_html", f"content type {kind}")
            return current, await _body(response, current, config.max_bytes)
        finally:
            await response.aclose()
    raise FetchFailed(url, "redirects", f"more than {config.max_redirects} redirects")


async def _body(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailed(url, "too_large", f"{declared} bytes, over {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchFailed(url, "too_large", f"over {max_bytes} bytes")
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise FetchFailed(url, "connection", f"read failed ({type(exc).__name__})") from None
    return b"".join(chunks)

"""The web page in a real headless Chromium against a real `agentfarm serve`, a worker and the scripted LLM.

Playwright drives the system's Chromium (Debian ``chromium``; ``playwright install`` is never run). Every
request the page makes is routed through a guard that refuses any host but loopback, and every console
error fails the test. Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pypdf import PdfReader

from tests.conftest import ACME, ACME_KEY, ROOT, service_env
from tests.support.llm_server import ScriptedLLM
from tests.support.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOPIC = "Offshore wind in the Baltic Sea"

if CHROMIUM is None:
    pytest.skip(
        "the browser tests need the system's Chromium: apt-get install -y --no-install-recommends chromium",
        allow_module_level=True,
    )

from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright, expect  # noqa: E402


@pytest.fixture
def served(redis_server: RedisServer, llm_server: ScriptedLLM, clean_state: None, tmp_path: Path) -> Iterator[str]:
    """``agentfarm serve`` as a real process on a free loopback port; yields its base URL."""
    port = free_port()
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=service_env(redis_server.url, llm_server),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the API exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class Watched:
    """What the browser did that a test must check: requests refused, console errors, screenshots taken."""

    page: Page
    shots: Path
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    expected_errors: list[tuple[int, str]] = field(default_factory=list)  # (status, URL path regex) provoked

    async def shot(self, name: str, *, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium logs every non-2xx fetch as an error; the ones a test provokes on purpose are expected.
        url = urlsplit(message.location.get("url", "")).path
        for status, path in self.expected_errors:
            failed = f"Failed to load resource: the server responded with a status of {status}"
            if message.text.startswith(failed) and re.fullmatch(path, url):
                return
        self.errors.append(f"{message.text} ({message.location})")

    def check(self) -> None:
        assert self.outside == [], f"requests left loopback: {self.outside}"
        assert self.errors == [], f"console errors: {self.errors}"


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@asynccontextmanager
async def watched_page(chromium: Browser, shots: Path, **context_options: Any) -> AsyncIterator[Watched]:
    """A page in a fresh context (own session storage) whose every request is checked to stay on loopback."""
    context = await chromium.new_context(accept_downloads=True, **context_options)
    page = await context.new_page()
    watched = Watched(page=page, shots=shots)

    async def guard(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname not in LOOPBACK:
            watched.outside.append(url)
            await route.abort("blockedbyclient")
            return
        await route.continue_()

    await context.route("**/*", guard)
    page.on("console", watched.on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
    try:
        yield watched
    finally:
        await context.close()


async def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url, headers=headers)


async def progress_until_done(page: Page, timeout_s: float = 60) -> list[int]:
    """The progress bar's values, sampled until it shows 100 (or the time runs out)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(int((await page.locator("#progress").get_attribute("value")) or 0))
        if seen[-1] == 100:
            break
        await page.wait_for_timeout(100)
    return seen


async def sign_in(page: Page, base: str) -> None:
    await page.goto(base + "/")
    await expect(page.locator("#sign-in")).to_be_visible()
    await page.locator("#api-key").fill(ACME_KEY)
    await page.locator("#api-key").press("Enter")  # keyboard only
    await expect(page.locator("#app")).to_be_visible()


class TestPage:
    async def test_submit_follow_read_and_download(self, served: str, llm_server: ScriptedLLM, tmp_path: Path) -> None:
        """Sign in, a field error from the API, submit research, progress to 100 %, the report, PDF and MD downloads."""
        llm_server.default_delay_s = 0.5  # a crew that takes a few seconds, so progress is seen moving
        async with (
            browser() as chromium,
            watched_page(chromium, tmp_path, viewport={"width": 1280, "height": 900}) as w,
        ):
            page = w.page
            await page.goto(served + "/")
            await expect(page.locator("#sign-in")).to_be_visible()
            await w.shot("01-sign-in")
            await sign_in(page, served)

            # The form is the API's: limits from its OpenAPI document.
            topic = page.locator("#f-topic")
            assert await topic.get_attribute("minlength") == "5"
            assert await topic.get_attribute("maxlength") == "500"
            assert await topic.get_attribute("required") is not None
            depth = page.locator("#f-depth")
            assert await depth.locator("option").all_text_contents() == ["basic", "standard", "comprehensive"]
            assert await depth.input_value() == "standard"
            await page.locator("#kind").select_option("technical-review")
            assert await page.locator("#f-context").evaluate("e => e.tagName") == "TEXTAREA"
            assert await page.locator("#f-context").get_attribute("maxlength") == "20000"
            await page.locator("#kind").select_option("research")
            webhook = page.locator("#f-webhook_url")
            if await webhook.count():  # the API's pattern for it, checked by the browser before sending
                await webhook.fill("ftp://example.org/hook")
                assert await webhook.evaluate("e => e.validity.patternMismatch")
                await webhook.fill("https://example.org/hook")
                assert await webhook.evaluate("e => e.validity.valid")
                await webhook.fill("")

            # A value the browser accepts but the API refuses: the API's message, next to its field.
            w.expected_errors.append((400, "/v1/tasks/research"))
            await topic.fill("     ")
            await topic.press("Enter")
            error = page.locator("#f-topic-error")
            await expect(error).to_be_visible()
            await expect(error).to_contain_text("must not be blank")
            assert await topic.get_attribute("aria-invalid") == "true"
            await expect(page.locator("#list-empty")).to_be_visible()  # nothing was submitted
            await w.shot("02-field-error")

            # Submit for real, then follow it.
            await topic.fill(TOPIC)
            await expect(error).to_be_hidden()  # editing the field clears its error
            await page.locator("#f-depth").select_option("comprehensive")
            await page.locator("#f-language").select_option("ru")
            await page.locator("#task-form button[type=submit]").click()
            await expect(page.locator("#detail")).to_be_visible()
            await expect(page.locator("#detail-title")).to_have_text(TOPIC)

            seen: list[int] = []
            modes: set[str] = set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                seen.append(int((await page.locator("#progress").get_attribute("value")) or 0))
                modes.add(await page.locator("#live").inner_text())
                if 0 < seen[-1] < 100 and not (tmp_path / "03-running.png").exists():
                    await w.shot("03-running")
                if seen[-1] == 100:
                    break
                await page.wait_for_timeout(100)
            assert seen[-1] == 100, seen
            assert seen == sorted(seen), f"progress went down: {seen}"
            assert any(0 < p < 100 for p in seen), f"no progress seen between 0 and 100: {seen}"
            await expect(page.locator("#progress-text")).to_have_text("100 %")
            await expect(page.locator("#d-status")).to_have_text("completed")

            # The report, rendered from the server's HTML export.
            task_id = await page.locator("#d-id").inner_text()
            title = (await get(f"{served}/v1/tasks/{task_id}", headers=ACME)).json()["result"]["title"]
            await expect(page.locator("#report article.report h1")).to_have_text(title)
            assert await page.locator("#report article.report h2").count() >= 1
            assert await page.locator("#report script").count() == 0
            row = page.locator(f'#task-list li[data-id="{task_id}"] .status')
            await expect(row).to_have_text("completed")
            await w.shot("04-report")

            # Downloads: fetched with the key, handed over as a Blob.
            async with page.expect_download() as pdf_download:
                await page.locator("#download-pdf").click()
            pdf_file = tmp_path / (await pdf_download.value).suggested_filename
            await (await pdf_download.value).save_as(pdf_file)
            assert pdf_file.name == f"report-{task_id}.pdf"
            pdf = pdf_file.read_bytes()
            assert pdf.startswith(b"%PDF-")
            text = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())
            assert " ".join(title.split()) in text

            async with page.expect_download() as md_download:
                await page.locator("#download-md").click()
            md_file = tmp_path / "report.md"
            await (await md_download.value).save_as(md_file)
            assert md_file.read_text(encoding="utf-8").startswith(f"# {title}")

            print(f"progress seen: {sorted(set(seen))}; updates: {sorted(m for m in modes if m)}")
            w.check()

    async def test_cancel_a_running_task(self, served: str, llm_server: ScriptedLLM, tmp_path: Path) -> None:
        """A running task can be cancelled from the page; its status says so and the cancel button goes away."""
        llm_server.default_delay_s = 2.0
        async with browser() as chromium, watched_page(chromium, tmp_path) as w:
            page = w.page
            await sign_in(page, served)
            await page.locator("#f-topic").fill("Tidal energy in Norway")
            await page.locator("#f-depth").select_option("comprehensive")
            await page.locator("#f-topic").press("Enter")
            await expect(page.locator("#d-status")).to_have_text("running", timeout=30_000)

            await page.locator("#cancel").click()

            await expect(page.locator("#d-status")).to_have_text("cancelled")
            await expect(page.locator("#cancel")).to_be_hidden()
            await expect(page.locator("#download-pdf")).to_be_hidden()
            await w.shot("cancelled")
            w.check()

    @pytest.mark.parametrize("missing", ["answers 404", "not in the document"])
    async def test_without_the_events_route_the_page_polls(
        self, served: str, llm_server: ScriptedLLM, tmp_path: Path, missing: str
    ) -> None:
        """Against an API without the events route (404, or not in its OpenAPI), the page polls every second."""
        llm_server.default_delay_s = 0.4
        async with browser() as chromium, watched_page(chromium, tmp_path) as w:
            page = w.page
            asked: list[str] = []

            async def no_route(route: Route) -> None:
                asked.append(route.request.url)
                path = urlsplit(route.request.url).path
                problem = {"title": "Not Found", "status": 404, "detail": f"no such resource: {path}"}
                await route.fulfill(status=404, content_type="application/problem+json", body=json.dumps(problem))

            async def without_events(route: Route) -> None:
                document = await (await route.fetch()).json()
                document["paths"].pop("/v1/tasks/{task_id}/events", None)
                await route.fulfill(status=200, content_type="application/json", body=json.dumps(document))

            await page.route(re.compile(r".*/v1/tasks/[^/]+/events$"), no_route)
            if missing == "answers 404":
                w.expected_errors.append((404, r"/v1/tasks/[^/]+/events"))
            else:
                await page.route("**/schema/openapi.json", without_events)
            await sign_in(page, served)
            await page.locator("#f-topic").fill("Heat pumps in old houses")
            await page.locator("#f-depth").select_option("comprehensive")
            await page.locator("#f-topic").press("Enter")
            await expect(page.locator("#live")).to_have_text("Updates: polling every second.")

            seen = await progress_until_done(page)

            assert seen[-1] == 100 and seen == sorted(seen), seen
            assert len(asked) == (1 if missing == "answers 404" else 0), asked  # then only the task is polled
            await expect(page.locator("#d-status")).to_have_text("completed")
            await expect(page.locator("#report article.report h1")).to_be_visible()
            w.check()

    async def test_a_dropped_stream_resumes_after_the_last_event(
        self, served: str, llm_server: ScriptedLLM, tmp_path: Path
    ) -> None:
        """When the event stream ends early, the page reconnects with Last-Event-ID and follows to the end."""
        llm_server.default_delay_s = 0.4
        async with browser() as chromium, watched_page(chromium, tmp_path) as w:
            page = w.page
            resumed_from: list[str | None] = []

            async def drop_first(route: Route) -> None:
                if not resumed_from and route.request.headers.get("last-event-id") is None:
                    resumed_from.append(None)
                    # The real stream, cut after its first event: the server's own replay of event 1.
                    task_id = urlsplit(route.request.url).path.split("/")[3]
                    text = ""
                    async with (
                        httpx.AsyncClient(timeout=30) as http,
                        http.stream("GET", f"{served}/v1/tasks/{task_id}/events", headers=ACME) as real,
                    ):
                        async for chunk in real.aiter_text():
                            text = (text + chunk).replace("\r\n", "\n")
                            if "\n\n" in text:
                                break
                    first = text.split("\n\n")[0] + "\n\n"
                    await route.fulfill(status=200, content_type="text/event-stream", body=first)
                    return
                resumed_from.append(route.request.headers.get("last-event-id"))
                await route.continue_()

            await page.route(re.compile(r".*/v1/tasks/[^/]+/events$"), drop_first)
            await sign_in(page, served)
            await page.locator("#f-topic").fill("District heating networks")
            await page.locator("#f-topic").press("Enter")

            seen = await progress_until_done(page)

            assert seen[-1] == 100 and seen == sorted(seen), seen
            assert resumed_from[:2] == [None, "1"], resumed_from
            await expect(page.locator("#d-status")).to_have_text("completed")
            w.check()

    async def test_phone_layout_and_headers(self, served: str, tmp_path: Path) -> None:
        """On a phone-sized screen the page fits the width; it is served with a strict CSP and no-sniff."""
        response = await get(served + "/")
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        async with (
            browser() as chromium,
            watched_page(chromium, tmp_path, viewport={"width": 390, "height": 844}, is_mobile=True) as w,
        ):
            page = w.page
            await sign_in(page, served)
            width = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
            await w.shot("05-phone")
            # A wrong key is refused at sign-in, next to the field.
            await page.locator("#sign-out").click()
            w.expected_errors.append((401, "/v1/tasks"))
            await page.locator("#api-key").fill("not-a-key-at-all")
            await page.locator("#api-key").press("Enter")
            await expect(page.locator("#api-key-error")).to_have_text("This key is not valid.")
            assert await page.evaluate("() => sessionStorage.length") == 0
            w.check()

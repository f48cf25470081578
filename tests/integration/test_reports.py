"""Report exports over HTTP: Markdown, JSON, a standalone HTML page and an A4 PDF whose Russian text extracts."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import time
from typing import Any

import msgspec
import pytest
import weasyprint  # type: ignore[import-untyped]
from litestar.testing import AsyncTestClient
from pypdf import PdfReader
from redis.asyncio import Redis as AsyncRedis
from structlog.testing import capture_logs

from crews.results import Report, Section
from jobs.models import Task, TaskError, utcnow
from jobs.settings import Settings
from jobs.store import TaskStore
from service import reports
from tests.conftest import ACME, BETA

Client = AsyncTestClient  # type: ignore[type-arg]

TITLE = "Морская ветроэнергетика в Балтийском море"
HEADING = "Экономика и затраты"
SOURCES = [
    {
        "id": 1,
        "url": "https://example.org/offshore-wind?lang=ru&x=1",
        "title": "Обзор морских ветропарков",
        "quote": "Мощность морских ветропарков выросла вдвое.",
    },
    {"id": 2, "url": "https://energy.example.net/report.pdf", "title": "Energy outlook", "quote": "Costs fell."},
]


def russian_report(**extra: Any) -> Report:
    """A report as a Russian research crew writes one: lists, a table, a link, a citation, code."""
    report = Report.build(
        title=TITLE,
        summary="Краткий вывод: **отрасль растёт**, затраты снижаются [1].",
        sections=[
            Section(
                heading=HEADING,
                body=(
                    "Основные факторы:\n\n- стоимость турбин\n- логистика и порты\n\n"
                    "| Год | Стоимость, €/МВт·ч |\n|---|---|\n| 2020 | 80 |\n| 2025 | 55 |\n\n"
                    "Подробнее: [отчёт IEA](https://www.iea.org/reports/offshore-wind) и [2]."
                ),
            ),
            Section(heading="Риски", body="1. Штормы\n2. Сети\n\n```\nкод = 1\n```"),
        ],
    )
    return msgspec.structs.replace(report, **extra) if extra else report


def cited(report: Report) -> Report:
    """``report`` with its sources, as a grounded research report carries them."""
    return msgspec.convert({**msgspec.to_builtins(report), "sources": SOURCES, "grounded": True}, Report)


async def finish(settings: Settings, task_id: str, change: Any) -> None:
    redis = AsyncRedis.from_url(settings.redis.url)  # the app's client lives on the test client's own loop
    try:
        await TaskStore(redis, settings.task_ttl_s).update(task_id, change)
    finally:
        await redis.aclose()


async def submitted(api: Client, language: str = "ru") -> dict[str, Any]:
    body = {"topic": "морская ветроэнергетика", "language": language}
    response = await api.post("/v1/tasks/research", json=body, headers=ACME)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


async def completed(api: Client, settings: Settings, report: Report | None = None) -> str:
    """A Russian research task of ACME's, completed with ``report`` as a worker would leave it."""
    task = await submitted(api)
    result = report or cited(russian_report())

    def done(t: Task) -> Task:
        return t.started(run_token=1, worker_id="w-1", job_id=t.id).to("completed", "completed", result=result)

    await finish(settings, task["id"], done)
    return str(task["id"])


def pdf_text(pdf: bytes) -> str:
    """The PDF's text as pypdf extracts it, and as pdftotext does when poppler-utils is installed.

    Whitespace is collapsed: a title wrapped over two lines still reads as one.
    """
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    if shutil.which("pdftotext"):
        text += (
            "\n" + subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
        )
    return " ".join(text.split())


def embedded_fonts(pdf: bytes) -> list[tuple[str, bool]]:
    """Each font the PDF uses and whether its glyphs are embedded in the file."""
    fonts = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        for reference in page["/Resources"]["/Font"].values():
            font = reference.get_object()
            descendant = font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font
            descriptor = descendant["/FontDescriptor"].get_object()
            fonts.append(
                (str(font["/BaseFont"]), any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3")))
            )
    return fonts


def link_targets(pdf: bytes) -> set[str]:
    targets = set()
    for page in PdfReader(io.BytesIO(pdf)).pages:
        for annotation in page.get("/Annots") or []:
            action = annotation.get_object().get("/A")
            if action is not None and "/URI" in action:
                targets.add(str(action["/URI"]))
    return targets


class TestPdf:
    async def test_russian_pdf_has_extractable_cyrillic_title_and_heading(
        self, api: Client, settings: Settings
    ) -> None:
        """A Russian report's PDF is A4 with embedded fonts, and its title and headings extract as Cyrillic text."""
        task_id = await completed(api, settings)

        response = await api.get(f"/v1/tasks/{task_id}/report", params={"format": "pdf"}, headers=ACME)

        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["content-disposition"] == f'attachment; filename="report-{task_id}.pdf"'
        pdf = response.content
        assert pdf.startswith(b"%PDF-")
        text = pdf_text(pdf)
        for expected in (TITLE, HEADING, "Риски", "логистика и порты", "2025"):
            assert expected in text, expected
        page = PdfReader(io.BytesIO(pdf)).pages[0]
        assert (round(float(page.mediabox.width)), round(float(page.mediabox.height))) == (595, 842)  # A4 in points
        fonts = embedded_fonts(pdf)
        assert fonts and all(embedded for _, embedded in fonts), fonts
        assert "https://www.iea.org/reports/offshore-wind" in link_targets(pdf)
        assert PdfReader(io.BytesIO(pdf)).metadata.title == TITLE

    async def test_accept_header_chooses_pdf(self, api: Client, settings: Settings) -> None:
        """`Accept: application/pdf` gets the PDF without `?format=`."""
        task_id = await completed(api, settings)

        response = await api.get(f"/v1/tasks/{task_id}/report", headers={**ACME, "Accept": "application/pdf"})

        assert response.status_code == 200
        assert response.content.startswith(b"%PDF-")

    def test_pdf_lists_the_sources_with_their_links(self) -> None:
        """The PDF ends with the numbered sources, each with its title, address, quote and a working link."""
        report = cited(russian_report())
        pdf = reports.to_pdf(_task("ru"), report)

        text = pdf_text(pdf)
        assert "Источники" in text
        assert "Обзор морских ветропарков" in text and "Мощность морских ветропарков выросла вдвое." in text
        assert "energy.example.net/report.pdf" in text
        assert {s["url"] for s in SOURCES} <= link_targets(pdf)


class TestHtml:
    async def test_html_export_is_a_complete_standalone_page(self, api: Client, settings: Settings) -> None:
        """The HTML export is one whole document: doctype, language, title, inline style, a CSP, no external loads."""
        task_id = await completed(api, settings)

        response = await api.get(f"/v1/tasks/{task_id}/report", headers={**ACME, "Accept": "text/html"})

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        page = response.text
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert '<html lang="ru">' in page and f"<title>{TITLE}</title>" in page
        assert f"<h1>{TITLE}</h1>" in page and f"<h2>{HEADING}</h2>" in page
        assert "<table>" in page and "<li>логистика и порты</li>" in page and "<strong>отрасль растёт</strong>" in page
        assert '<a href="https://www.iea.org/reports/offshore-wind" rel="noopener noreferrer nofollow">' in page
        assert "<style>" in page and "<link" not in page and "<script" not in page and "src=" not in page
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "style-src 'sha256-" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"

    def test_sources_are_listed_and_citations_link_to_them(self) -> None:
        """Each source is a numbered list item with its link and quote; `[n]` in the text links to it."""
        report = cited(russian_report())

        page = reports.to_html(_task("ru"), report)

        assert '<section class="sources" id="sources">\n<h2>Источники</h2>' in page
        assert '<li id="source-1" value="1"><a href="https://example.org/offshore-wind?lang=ru&amp;x=1"' in page
        assert "<blockquote>Мощность морских ветропарков выросла вдвое.</blockquote>" in page
        assert '<a href="#source-1" class="cite">[1]</a>' in page
        assert '<a href="#source-2" class="cite">[2]</a>' in page

    def test_an_ungrounded_report_says_so(self) -> None:
        """A report written without sources (`grounded: false`) says so where the sources would be."""
        report = russian_report(grounded=False)

        page = reports.to_html(_task("en"), report)

        assert "No sources were read" in page

    async def test_llm_html_and_scripts_are_escaped(self, api: Client, settings: Settings) -> None:
        """Raw HTML, script links and images in the report text come out as inert text, in HTML and PDF."""
        hostile = russian_report(
            summary=(
                '<script>alert("x")</script> <img src=x onerror=alert(1)> [click](javascript:alert(1)) '
                "![tracker](http://127.0.0.1:9/pixel.png)"
            ),
            sections=[Section(heading='<b onclick="x()">Заголовок</b>', body="<iframe src='http://evil'></iframe>")],
        )
        task_id = await completed(api, settings, hostile)

        page = (await api.get(f"/v1/tasks/{task_id}/report", params={"format": "html"}, headers=ACME)).text
        pdf = await api.get(f"/v1/tasks/{task_id}/report", params={"format": "pdf"}, headers=ACME)

        for raw in ("<script", "<img", "<iframe", "<b ", 'href="javascript:', 'src="'):
            assert raw not in page, raw
        assert "&lt;script&gt;" in page and "&lt;b onclick=" in page
        assert pdf.status_code == 200 and "Заголовок" in pdf_text(pdf.content)


class TestMarkdownAndJson:
    async def test_markdown_is_the_default(self, api: Client, settings: Settings) -> None:
        """Without `Accept` or `format` the report is its Markdown, sources listed at the end if it has any."""
        task_id = await completed(api, settings)

        response = await api.get(f"/v1/tasks/{task_id}/report", headers=ACME)

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/markdown; charset=utf-8"
        assert response.text.startswith(f"# {TITLE}\n")
        assert f"## {HEADING}" in response.text
        if "sources" in Report.__struct_fields__:
            assert "https://example.org/offshore-wind?lang=ru&x=1" in response.text

    def test_markdown_appends_sources_it_does_not_list(self) -> None:
        """A report whose Markdown does not list its sources gets them as a numbered list at the end."""
        report = cited(russian_report())

        text = reports.to_markdown(_task("ru"), report)

        assert text.endswith(
            "## Источники\n\n"
            "1. [Обзор морских ветропарков](<https://example.org/offshore-wind?lang=ru&x=1>)"
            " — “Мощность морских ветропарков выросла вдвое.”\n"
            "2. [Energy outlook](<https://energy.example.net/report.pdf>) — “Costs fell.”\n"
        )

    async def test_json_is_the_structured_report(self, api: Client, settings: Settings) -> None:
        """`?format=json` answers the structured report: title, summary, sections and Markdown."""
        task_id = await completed(api, settings)

        response = await api.get(f"/v1/tasks/{task_id}/report", params={"format": "json"}, headers=ACME)

        assert response.status_code == 200
        body = response.json()
        assert body["title"] == TITLE
        assert [s["heading"] for s in body["sections"]] == [HEADING, "Риски"]


class TestWhatCannotBeServed:
    @pytest.mark.parametrize(
        ("params", "accept"), [({"format": "docx"}, None), ({}, "image/png"), ({"format": "PDF"}, "application/pdf")]
    )
    async def test_unknown_type_is_406_listing_the_available_ones(
        self, api: Client, settings: Settings, params: dict[str, str], accept: str | None
    ) -> None:
        """A format or Accept type the report does not have gets 406 naming every type it does have."""
        task_id = await completed(api, settings)
        headers = {**ACME, **({"Accept": accept} if accept else {})}

        response = await api.get(f"/v1/tasks/{task_id}/report", params=params, headers=headers)

        assert response.status_code == 406, response.text
        assert response.headers["content-type"] == "application/problem+json"
        detail = response.json()["detail"]
        assert all(name in detail for name in ("md", "json", "html", "pdf")), detail

    @pytest.mark.parametrize("format_", ["md", "html", "pdf"])
    async def test_unfinished_task_is_409(self, api: Client, format_: str) -> None:
        """An unfinished task has no report yet, in any format: 409 saying its status (a worker may have started it)."""
        task = await submitted(api)

        response = await api.get(f"/v1/tasks/{task['id']}/report", params={"format": format_}, headers=ACME)

        assert response.status_code == 409
        detail = response.json()["detail"]
        assert " is queued;" in detail or " is running;" in detail, detail

    async def test_failed_task_is_409_without_a_report(self, api: Client, settings: Settings) -> None:
        """A failed task says it has no report, instead of promising one."""
        task = await submitted(api)

        def failed(t: Task) -> Task:
            started = t.started(run_token=1, worker_id="w-1", job_id=t.id)
            return started.to("failed", "error", error=TaskError(type="crew_error", message="boom"))

        await finish(settings, task["id"], failed)

        response = await api.get(f"/v1/tasks/{task['id']}/report", params={"format": "pdf"}, headers=ACME)

        assert response.status_code == 409
        assert "failed; it has no report" in response.json()["detail"]

    async def test_other_tenants_report_is_404(self, api: Client, settings: Settings) -> None:
        """Another tenant's report is not found, in every format."""
        task_id = await completed(api, settings)

        for format_ in reports.FORMATS:
            response = await api.get(f"/v1/tasks/{task_id}/report", params={"format": format_}, headers=BETA)
            assert response.status_code == 404


class TestFailedExport:
    @pytest.mark.parametrize("broken", ["empty", "raises"])
    async def test_failed_pdf_is_a_logged_problem_not_an_empty_file(
        self, api: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, broken: str
    ) -> None:
        """When the PDF engine fails or returns nothing, the answer is a 500 problem with its type, and it is logged."""

        def write_pdf(*args: Any, **kwargs: Any) -> bytes:
            if broken == "raises":
                raise OSError("cairo: out of memory")
            return b""

        monkeypatch.setattr(weasyprint.HTML, "write_pdf", write_pdf)
        task_id = await completed(api, settings)

        with capture_logs() as logs:
            response = await api.get(f"/v1/tasks/{task_id}/report", params={"format": "pdf"}, headers=ACME)

        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == "urn:agentfarm:problem:report-export-failed"
        assert problem["title"] == "Report Export Failed"
        assert "pdf" in problem["detail"] and task_id in problem["detail"]
        failures = [e for e in logs if e["event"] == "report_export_failed"]
        assert failures and failures[0]["task_id"] == task_id and failures[0]["format"] == "pdf"
        # The other formats still work.
        assert (await api.get(f"/v1/tasks/{task_id}/report", params={"format": "md"}, headers=ACME)).status_code == 200

    async def test_render_over_the_time_limit_is_a_problem(
        self, api: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A render that takes longer than the limit is answered with a problem, not a hung request."""
        real = reports.to_html

        def slow(task: Task, report: Report) -> str:
            time.sleep(0.5)
            return real(task, report)

        monkeypatch.setattr(reports, "to_html", slow)
        monkeypatch.setattr(reports, "RENDER_TIMEOUT_S", 0.1)
        task_id = await completed(api, settings)

        response = await api.get(f"/v1/tasks/{task_id}/report", params={"format": "html"}, headers=ACME)

        assert response.status_code == 500
        assert "took longer than 0.1 s" in response.json()["detail"]

    async def test_rendering_does_not_block_other_requests(
        self, api: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While a slow PDF renders, the same API process keeps answering other requests."""
        real = reports.to_pdf

        def slow(task: Task, report: Report) -> bytes:
            time.sleep(1.0)
            return real(task, report)

        monkeypatch.setattr(reports, "to_pdf", slow)
        task_id = await completed(api, settings)

        async def probe() -> float:
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert (await api.get("/health/live")).status_code == 200
            return time.monotonic() - started

        pdf, probe_s = await asyncio.gather(
            api.get(f"/v1/tasks/{task_id}/report", params={"format": "pdf"}, headers=ACME), probe()
        )

        assert pdf.status_code == 200
        assert probe_s < 0.5, probe_s


class TestOpenApi:
    async def test_report_media_types_are_documented(self, api: Client) -> None:
        """The OpenAPI document lists the report's four media types and its export-failure problem."""
        document = (await api.get("/schema/openapi.json")).json()
        operation = document["paths"]["/v1/tasks/{task_id}/report"]["get"]

        assert set(operation["responses"]["200"]["content"]) == set(reports.FORMATS.values())
        assert "500" in operation["responses"]


def _task(language: str) -> Task:
    """A completed-looking task to render directly (no Redis), in ``language``."""
    now = utcnow()
    return Task(
        id="00000000-0000-4000-8000-000000000001",
        kind="research",
        tenant="acme",
        params={"language": language},
        created_at=now,
        updated_at=now,
    )

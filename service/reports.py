"""A finished report exported as Markdown, JSON, HTML (a standalone, printable page) or PDF (A4).

Report text comes from an LLM and is never trusted: its Markdown is rendered
by ``service.report_markdown`` (raw HTML escaped, no images, checked links),
so an export loads nothing and runs nothing. The PDF is that same HTML
printed by WeasyPrint with fonts that have Cyrillic glyphs (embedded as
subsets, so Russian text renders and extracts as text); it fetches no URL.
HTML and PDF are rendered in a small thread pool, off the event loop, within
a time limit. An export that fails is an ``ExportFailed`` problem (logged),
never an empty document.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import html
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import structlog
from litestar import Request

from crews.results import Report
from jobs.models import Task
from service import report_markdown
from service.errors import ApiError, Conflict, NotAcceptable

log = structlog.get_logger(__name__)

# ``?format=`` value -> media type; the first is the default (``Accept: */*`` or none).
FORMATS = {"md": "text/markdown", "json": "application/json", "html": "text/html", "pdf": "application/pdf"}
_EXTENSIONS = {media_type: name for name, media_type in FORMATS.items()}
# At most this many HTML/PDF renders at once per API process (each is CPU-bound, ~0.1-1 s).
RENDER_THREADS = 2
# A render still running after this is given up on (the answer is a problem, the thread finishes alone).
RENDER_TIMEOUT_S = 60.0

_HERE = Path(__file__).resolve().parent
_LABELS = {
    "en": {
        "sources": "Sources",
        "ungrounded": "No sources were read: this report is written from the model's own knowledge.",
    },
    "ru": {
        "sources": "Источники",
        "ungrounded": "Источники не использовались: отчёт написан по собственным знаниям модели.",
    },
}

T = TypeVar("T")


class ExportFailed(ApiError):
    """A report could not be rendered in the asked format: our fault, so a 500 problem (logged), never an empty file."""

    status = 500
    title = "Report Export Failed"
    type = "urn:agentfarm:problem:report-export-failed"


@dataclass(frozen=True, slots=True)
class Source:
    """A page the job read, as the report cites it (``[id]``)."""

    id: int
    url: str
    title: str
    quote: str


@dataclass(frozen=True, slots=True)
class Export:
    """A rendered report: the body, its media type and the response headers it needs."""

    body: bytes | str | Report
    media_type: str
    headers: dict[str, str]


def negotiate(request: Request[Any, Any, Any], format: str | None) -> str:  # noqa: A002 - the query parameter's name
    """The media type to answer with, from ``?format=`` or else ``Accept``; 406 (listing what exists) if none fits."""
    if format is not None:
        if format not in FORMATS:
            raise NotAcceptable(f"format: {format!r} is not available; use one of {', '.join(FORMATS)}")
        return FORMATS[format]
    wanted = request.accept.best_match(list(FORMATS.values()))
    if wanted is None:
        accept = request.headers.get("accept", "")
        offered = ", ".join(f"{media_type} (?format={name})" for name, media_type in FORMATS.items())
        raise NotAcceptable(f"Accept: cannot produce {accept!r}; the report is available as {offered}")
    return wanted


def not_ready(task: Task) -> Conflict:
    """The 409 for a task without a report: still on its way, or finished without one."""
    if task.status in ("failed", "cancelled"):
        return Conflict(f"task {task.id} is {task.status}; it has no report")
    return Conflict(f"task {task.id} is {task.status}; its report exists once it is completed")


async def export(task: Task, report: Report, media_type: str) -> Export:
    """``report`` of ``task`` as ``media_type`` (one of ``FORMATS``); ``ExportFailed`` if rendering fails."""
    name = _EXTENSIONS[media_type]
    headers = {
        "Vary": "Accept",
        "Content-Disposition": f'{"attachment" if name == "pdf" else "inline"}; filename="report-{task.id}.{name}"',
    }
    if name == "json":
        return Export(report, media_type, headers)
    if name == "md":
        return Export(to_markdown(task, report), media_type, headers)
    render = to_pdf if name == "pdf" else to_html
    try:
        body: bytes | str = await _off_loop(render, task, report)
    except TimeoutError:
        log.error("report_export_timed_out", task_id=task.id, format=name, limit_s=RENDER_TIMEOUT_S)  # noqa: TRY400 - a timeout has no traceback
        raise ExportFailed(
            f"the {name} export of task {task.id} took longer than {RENDER_TIMEOUT_S:g} s; retry, or use ?format=md"
        ) from None
    except Exception as exc:
        log.exception("report_export_failed", task_id=task.id, format=name)
        raise ExportFailed(
            f"the report of task {task.id} could not be rendered as {name} ({type(exc).__name__}); "
            "the error was logged; ?format=md and ?format=json still work"
        ) from exc
    if name == "html":
        headers["Content-Security-Policy"] = export_csp()
    return Export(body, media_type, headers)


def sources_of(report: Report) -> list[Source]:
    """The pages the report cites, read defensively: older reports have none, items may be structs or dicts."""
    found: list[Source] = []
    for number, item in enumerate(getattr(report, "sources", None) or [], start=1):
        get = item.get if isinstance(item, Mapping) else (lambda key, item=item: getattr(item, key, None))
        raw_id = get("id")
        url = str(get("url") or "")
        found.append(
            Source(
                id=raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else number,
                url=url,
                title=str(get("title") or "") or url,
                quote=str(get("quote") or ""),
            )
        )
    return found


def grounded_of(report: Report) -> bool | None:
    """Whether the report was written from pages read (``None``: the report predates the field)."""
    value = getattr(report, "grounded", None)
    return value if isinstance(value, bool) else None


def to_markdown(task: Task, report: Report) -> str:
    """The report's Markdown, with its sources listed at the end unless it lists them itself."""
    sources = sources_of(report)
    if not sources or all(s.url in report.markdown for s in sources):
        return report.markdown
    lines = [report.markdown.rstrip(), "", f"## {_label(task, 'sources')}", ""]
    for source in sources:
        title = re.sub(r"([\\\[\]])", r"\\\1", source.title)
        link = f"[{title}](<{source.url}>)" if _linkable(source.url) and not re.search(r"[<>\s]", source.url) else title
        quote = f" — “{' '.join(source.quote.split())}”" if source.quote.strip() else ""
        lines.append(f"{source.id}. {link}{quote}")
    return "\n".join(lines) + "\n"


def to_html(task: Task, report: Report) -> str:
    """The report as a standalone page: one document with its own inline style, loading nothing."""
    sources = sources_of(report)
    ids = {s.id for s in sources}

    def render(text: str) -> str:
        return report_markdown.render(text, ids)

    parts = [f"<h1>{_esc(report.title)}</h1>"]
    if report.summary.strip():
        parts.append(f'<div class="summary">\n{render(report.summary)}</div>')
    parts += [f"<section>\n<h2>{_esc(s.heading)}</h2>\n{render(s.body)}</section>" for s in report.sections]
    return _template().substitute(
        lang=_language(task),
        title=_esc(report.title),
        css=_css(),
        meta=_esc(_meta(task)),
        body="\n".join(parts),
        sources=_sources_html(task, sources, grounded_of(report)),
    )


def to_pdf(task: Task, report: Report) -> bytes:
    """The HTML export printed on A4 by WeasyPrint (print media), with its fonts embedded."""
    import weasyprint  # type: ignore[import-untyped]  # noqa: PLC0415 - ~1 s to import: paid by the first PDF only

    pdf: bytes | None = weasyprint.HTML(string=to_html(task, report), url_fetcher=_fetch_nothing).write_pdf()
    if not pdf or not pdf.startswith(b"%PDF-"):
        raise RuntimeError(f"WeasyPrint produced no PDF ({len(pdf or b'')} bytes)")
    return pdf


@cache
def export_csp() -> str:
    """The HTML export's Content-Security-Policy: its own inline style (by hash) and nothing else."""
    digest = base64.b64encode(hashlib.sha256(_css().encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _fetch_nothing(url: str, *args: Any, **kwargs: Any) -> Any:
    """WeasyPrint's URL fetcher: an export loads nothing (no SSRF through a report)."""
    raise ValueError(f"report exports load no resources (refused {url[:80]!r})")


async def _off_loop(fn: Callable[[Task, Report], T], task: Task, report: Report) -> T:
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # log fields and the trace reach the render thread
    future = loop.run_in_executor(_renderers(), context.run, fn, task, report)
    return await asyncio.wait_for(future, RENDER_TIMEOUT_S)


@cache
def _renderers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="report-render")


def _linkable(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _sources_html(task: Task, sources: list[Source], grounded: bool | None) -> str:
    heading = _esc(_label(task, "sources"))
    if not sources:
        if grounded is not False:
            return ""
        note = _esc(_label(task, "ungrounded"))
        return (
            f'<section class="sources" id="sources">\n<h2>{heading}</h2>\n<p class="ungrounded">{note}</p>\n</section>'
        )

    items = []
    for s in sources:
        url, title = _esc(s.url), _esc(s.title)
        link = f'<a href="{url}" rel="noopener noreferrer nofollow">{title}</a>' if _linkable(s.url) else title
        quote = f"<blockquote>{_esc(s.quote)}</blockquote>" if s.quote.strip() else ""
        items.append(f'<li id="source-{s.id}" value="{s.id}">{link}<span class="url">{url}</span>{quote}</li>')
    return (
        f'<section class="sources" id="sources">\n<h2>{heading}</h2>\n<ol>\n' + "\n".join(items) + "\n</ol>\n</section>"
    )


def _language(task: Task) -> str:
    language = str(task.params.get("language", "en"))
    return language if language in _LABELS else "en"


def _label(task: Task, key: str) -> str:
    return _LABELS[_language(task)][key]


def _meta(task: Task) -> str:
    when = (task.finished_at or task.updated_at).date().isoformat()
    return f"{task.kind.replace('_', ' ').capitalize()} · {when} · task {task.id}"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


@cache
def _css() -> str:
    return (_HERE / "web" / "report.css").read_text(encoding="utf-8")


@cache
def _template() -> Template:
    return Template((_HERE / "templates" / "report.html").read_text(encoding="utf-8"))

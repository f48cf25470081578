"""The citation gate: a report cites only pages this task read, each with a quote taken from that page.

A pure function of the writer's draft and the pages read. The writer saw the
pages as numbered excerpts ``[1]..[n]``; in its text:

- a citation ``[k]`` (or ``[k, m]``) of a page that was read is kept and
  renumbered so the stored sources count from 1 in order of first citation;
  one of anything else is removed and counted;
- a URL (bare or as a markdown link) of a page that was read becomes its
  citation; any other URL is removed (a link keeps its text) and counted.

Each cited page's ``quote`` is chosen here, not by the model: the sentence of
the page's extracted text that shares the most words with the sentence that
cites it, taken verbatim from that text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from crews.results import Source

_CITATION = re.compile(r"\[(\s*\d{1,4}\s*(?:[,;]\s*\d{1,4}\s*)*)\]")
_LINK = re.compile(r"\[([^\]\n]{1,300})\]\((https?://[^)\s]+)\)")
_URL = re.compile(r"https?://[^\s<>()\[\]{}\"'`]+")
_SENTENCE = re.compile(r"[^.!?…\n]+(?:[.!?…]+|$)", re.MULTILINE)
_WORD = re.compile(r"\w{3,}", re.UNICODE)
_MAX_QUOTE = 400


@dataclass(frozen=True, slots=True)
class ReadSource:
    """A page read in this task, as numbered in the excerpts the writer saw."""

    id: int
    url: str
    title: str
    text: str
    aliases: tuple[str, ...] = ()  # other URLs of the same page (the search result before redirects)


@dataclass
class GateResult:
    title: str
    summary: str
    bodies: list[str]
    sources: list[Source]
    removed: int


@dataclass
class _Gate:
    read: dict[int, ReadSource]
    by_url: dict[str, int]
    order: dict[int, int] = field(default_factory=dict)  # read id -> stored id
    context: dict[int, str] = field(default_factory=dict)  # read id -> the sentence that first cites it
    removed: int = 0

    def text(self, text: str, *, keep_citations: bool = True) -> str:
        before = self.removed
        text = _LINK.sub(lambda m: self._url(m.group(2), m.group(1)), text)
        text = _URL.sub(lambda m: self._bare_url(m.group(0)), text)
        out: list[str] = []
        last = 0
        for match in _CITATION.finditer(text):
            out.append(text[last : match.start()])
            last = match.end()
            kept = [int(n) for n in re.split(r"[,;]", match.group(1)) if int(n) in self.read]
            self.removed += len(re.split(r"[,;]", match.group(1))) - len(kept)
            if not keep_citations:
                continue
            for read_id in dict.fromkeys(kept):
                self.order.setdefault(read_id, len(self.order) + 1)
                self.context.setdefault(read_id, _sentence_before(text, match.start()))
            out.append("".join(f"[{self.order[k]}]" for k in dict.fromkeys(kept)))
        out.append(text[last:])
        result = "".join(out)
        if self.removed != before or not keep_citations:
            result = re.sub(r"[ \t]+(?=[.,;:!?)])", "", re.sub(r"[ \t]{2,}", " ", result)).strip()
        return result

    def _url(self, url: str, label: str) -> str:
        read_id = self.by_url.get(_normal(url))
        if read_id is None:
            self.removed += 1
            return label
        return f"{label} [{read_id}]"

    def _bare_url(self, raw: str) -> str:
        url = raw.rstrip(".,;:!?")
        tail = raw[len(url) :]
        read_id = self.by_url.get(_normal(url))
        if read_id is None:
            self.removed += 1
            return tail
        return f"[{read_id}]{tail}"


def _normal(url: str) -> str:
    return url.split("#", 1)[0].rstrip("/").lower()


def _sentence_before(text: str, position: int) -> str:
    start = max(text.rfind(". ", 0, position), text.rfind("\n", 0, position), -1) + 1
    return text[start:position]


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def choose_quote(page_text: str, citing: str) -> str:
    """A passage of ``page_text``, verbatim: the sentence sharing most words with ``citing`` (first on ties)."""
    wanted = _words(citing)
    best: tuple[int, int, int] | None = None  # (score, start, end)
    for match in _SENTENCE.finditer(page_text):
        start, end = match.start(), match.end()
        while start < end and page_text[start].isspace():
            start += 1
        if end - start < 20:
            continue
        score = len(wanted & _words(page_text[start:end]))
        if best is None or score > best[0]:
            best = (score, start, end)
    if best is None:
        start, end = 0, len(page_text)
        while start < end and page_text[start].isspace():
            start += 1
    else:
        _, start, end = best
    quote = page_text[start:end].rstrip()
    if len(quote) > _MAX_QUOTE:
        cut = quote.rfind(" ", 0, _MAX_QUOTE)
        quote = quote[: cut if cut > 0 else _MAX_QUOTE]
    return quote


def apply_gate(title: str, summary: str, bodies: Sequence[str], read: Sequence[ReadSource]) -> GateResult:
    """The draft with every citation checked against ``read``, and the cited pages as numbered sources."""
    by_url: dict[str, int] = {}
    for source in read:
        for url in (source.url, *source.aliases):
            by_url.setdefault(_normal(url), source.id)
    gate = _Gate(read={s.id: s for s in read}, by_url=by_url)
    clean_title = gate.text(title, keep_citations=False)
    clean_summary = gate.text(summary)
    clean_bodies = [gate.text(body) for body in bodies]
    sources = [
        Source(
            id=stored,
            url=gate.read[read_id].url,
            title=gate.read[read_id].title,
            quote=choose_quote(gate.read[read_id].text, gate.context.get(read_id, "")),
        )
        for read_id, stored in sorted(gate.order.items(), key=lambda item: item[1])
    ]
    return GateResult(
        title=clean_title, summary=clean_summary, bodies=clean_bodies, sources=sources, removed=gate.removed
    )

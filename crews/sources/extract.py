"""Main text of an HTML page, by trafilatura (a maintained extractor; no regular expressions over HTML).

trafilatura gets the raw bytes and detects the encoding itself (Cyrillic pages in
windows-1251 or KOI8-R included).
"""

from __future__ import annotations

from dataclasses import dataclass

import trafilatura

# Less than this is navigation or an error page, not an article worth citing.
MIN_TEXT_CHARS = 200


@dataclass(frozen=True, slots=True)
class Extracted:
    title: str
    text: str


def extract(html: bytes, url: str | None = None) -> Extracted | None:
    """The page's title and main text, or None when it has no main text worth citing."""
    document = trafilatura.bare_extraction(
        html, url=url, with_metadata=True, include_comments=False, include_tables=True, deduplicate=True
    )
    if document is None:
        return None
    text = (getattr(document, "text", None) or "").strip()
    if len(text) < MIN_TEXT_CHARS:
        return None
    title = (getattr(document, "title", None) or "").strip()
    return Extracted(title=title, text=text)

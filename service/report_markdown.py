"""Report Markdown (written by an LLM, so untrusted) rendered to HTML that is safe to serve and print.

markdown-it-py (CommonMark, with tables and strikethrough): raw HTML off, so it
comes out escaped; images off, so an export loads nothing; links only to
http(s), mailto and in-page anchors; no inline style (table alignment becomes
a class), since the exports' CSP allows none. ``[n]`` in the text links to
source ``n`` of the report's list when it has that source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

_CITATION = re.compile(r"\[(\d{1,4})\]")
_SAFE_LINK = re.compile(r"^(?:https?://|mailto:|#)", re.IGNORECASE)


def render(text: str, source_ids: set[int]) -> str:
    """``text`` as HTML; ``[n]`` becomes a link to ``#source-n`` for each n in ``source_ids``."""
    rendered: str = _markdown().render(text, {"source_ids": source_ids})
    return rendered


@cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("js-default", {"html": False, "linkify": False, "typographer": False})  # tables, strikethrough
    md.disable("image")  # an export loads nothing; an image is left as its Markdown text
    md.validateLink = _safe_link  # type: ignore[method-assign]
    md.core.ruler.push("citations", _link_citations)
    md.add_render_rule("link_open", _render_link_open)
    for cell in ("th_open", "td_open"):
        md.add_render_rule(cell, _render_cell_open)
    return md


def _safe_link(url: str) -> bool:
    return bool(_SAFE_LINK.match(url.strip()))


def _link_citations(state: StateCore) -> None:
    """``[n]`` in the text becomes a link to source ``n`` in the list, when the report has that source."""
    ids: set[int] = state.env.get("source_ids") or set()
    if not ids:
        return
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        in_link = 0
        for token in block.children:
            in_link += {"link_open": 1, "link_close": -1}.get(token.type, 0)
            if token.type == "text" and not in_link and "[" in token.content:
                children += _cited(token.content, ids)
            else:
                children.append(token)
        block.children = children


def _cited(text: str, ids: set[int]) -> list[Token]:
    tokens: list[Token] = []
    start = 0
    for match in _CITATION.finditer(text):
        number = int(match.group(1))
        if number not in ids:
            continue
        if match.start() > start:
            tokens.append(Token("text", "", 0, content=text[start : match.start()]))
        tokens += [
            Token("link_open", "a", 1, attrs={"href": f"#source-{number}", "class": "cite"}),
            Token("text", "", 0, content=match.group(0)),
            Token("link_close", "a", -1),
        ]
        start = match.end()
    if start < len(text):
        tokens.append(Token("text", "", 0, content=text[start:]))
    return tokens


def _render_link_open(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    if not str(token.attrGet("href") or "").startswith("#"):
        token.attrSet("rel", "noopener noreferrer nofollow")  # a link out tells the site nothing
    return renderer.renderToken(tokens, idx, options, env)


def _render_cell_open(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """A table cell's alignment as a class: the exports' CSP allows no inline style attribute."""
    token = tokens[idx]
    style = str(token.attrGet("style") or "")
    if style.startswith("text-align:"):
        token.attrs.pop("style", None)
        token.attrSet("class", f"align-{style.removeprefix('text-align:')}")
    return renderer.renderToken(tokens, idx, options, env)

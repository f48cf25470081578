"""The extractor path on saved pages: main text in, navigation, sidebars, scripts and footers out."""

from __future__ import annotations

from pathlib import Path

import pytest

from crews.sources.extract import extract
from crews.sources.stage import excerpt_of

PAGES = Path(__file__).resolve().parents[1] / "fixtures" / "pages"


class TestExtract:
    def test_english_article_keeps_the_text_and_drops_the_chrome(self) -> None:
        page = extract((PAGES / "en_batteries.html").read_bytes(), "https://news.example/batteries")
        assert page is not None
        assert page.title == "Solid-state batteries move from the lab to the factory"
        assert "about 40 percent more energy per kilogram" in page.text
        for chrome in ("Sign in", "Ten gadgets", "All rights reserved", "analytics"):
            assert chrome not in page.text

    def test_russian_article_in_windows_1251_is_decoded(self) -> None:
        """The bytes are windows-1251; trafilatura detects the encoding itself."""
        raw = (PAGES / "ru_batteries.html").read_bytes()
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        page = extract(raw)
        assert page is not None
        assert page.title == "Твердотельные аккумуляторы выходят из лаборатории на завод"
        assert "твёрдый электролит трескается" in page.text
        assert "Войти" not in page.text and "Все права защищены" not in page.text

    def test_a_page_without_main_text_gives_nothing(self) -> None:
        assert extract(b"<html><body><nav><a href='/'>Home</a></nav></body></html>") is None

    def test_excerpt_is_a_verbatim_prefix(self) -> None:
        page = extract((PAGES / "en_supply.html").read_bytes())
        assert page is not None
        short = excerpt_of(page.text, 200)
        assert page.text.startswith(short) and len(short) <= 200

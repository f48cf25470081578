"""The citation gate: only pages the task read are cited, renumbered from 1, each quote verbatim from its page."""

from __future__ import annotations

import re

from crews.results import Report, Section
from crews.sources.gate import ReadSource, apply_gate, choose_quote

PAGE_A = (
    "Solid-state batteries replace the liquid electrolyte with a solid layer. "
    "Prototype cells store about 40 percent more energy per kilogram. Costs remain high."
)
PAGE_B = "Lithium plating limits charging speed. Chargers slow down above 80 percent to protect the cell."
PAGE_C = "Investors poured two billion dollars into the sector last year."
READ = [
    ReadSource(id=1, url="https://a.example/batteries", title="A", text=PAGE_A),
    ReadSource(id=2, url="https://b.example/charging", title="B", text=PAGE_B, aliases=("https://b.example/old",)),
    ReadSource(id=3, url="https://c.example/money", title="C", text=PAGE_C),
]


class TestCitations:
    def test_unknown_ids_and_unread_urls_are_removed_and_counted(self) -> None:
        """[7] was never read and https://unread.example was never fetched: both go, and both are counted."""
        result = apply_gate(
            "Batteries",
            "Cells store 40 percent more energy per kilogram [3]. A claim from nowhere [7].",
            [
                "Chargers slow down above 80 percent [2]. See https://unread.example/x for more.",
                "Read [this](https://nowhere.example/y) too.",
            ],
            READ,
        )
        assert result.removed == 3
        assert "[7]" not in result.summary and "unread.example" not in result.bodies[0]
        assert "nowhere.example" not in result.bodies[1] and "this" in result.bodies[1]

    def test_kept_citations_are_renumbered_from_one_in_order_of_first_citation(self) -> None:
        result = apply_gate("T", "First [3], then [1, 3].", ["And [2]."], READ)
        assert result.summary == "First [1], then [2][1]."
        assert result.bodies == ["And [3]."]
        assert [(s.id, s.url) for s in result.sources] == [
            (1, "https://c.example/money"),
            (2, "https://a.example/batteries"),
            (3, "https://b.example/charging"),
        ]
        assert result.removed == 0

    def test_a_read_url_becomes_its_citation(self) -> None:
        """A URL of a page that was read (also the one before its redirect) is kept, as the citation."""
        result = apply_gate("T", "See https://b.example/old.", ["[Page](https://a.example/batteries/) says so."], READ)
        assert result.summary == "See [1]."
        assert result.bodies == ["Page [2] says so."]
        assert result.removed == 0

    def test_no_read_pages_means_no_citation_survives(self) -> None:
        result = apply_gate("T [1]", "Made up [1][2] https://x.example.", [], [])
        assert result.sources == [] and result.removed == 4
        assert "[" not in result.title + result.summary and "x.example" not in result.summary


class TestQuotes:
    def test_quote_is_the_page_sentence_closest_to_the_citing_sentence(self) -> None:
        quote = choose_quote(PAGE_A, "Prototype cells hold 40 percent more energy per kilogram")
        assert quote == "Prototype cells store about 40 percent more energy per kilogram."
        assert quote in PAGE_A

    def test_every_quote_is_verbatim_in_its_page(self) -> None:
        result = apply_gate("T", "Energy per kilogram [1]. Charging slows [2]. Money [3].", [], READ)
        for source in result.sources:
            page = next(r for r in READ if r.url == source.url)
            assert source.quote and source.quote in page.text

    def test_long_sentences_are_cut_to_a_verbatim_prefix(self) -> None:
        text = "word " * 300 + "end."
        quote = choose_quote(text, "word")
        assert len(quote) <= 400 and quote in text


class TestReport:
    def test_markdown_ends_with_the_sources_and_every_citation_resolves(self) -> None:
        result = apply_gate("T", "Energy [1].", ["Charging [2]. Junk [9]."], READ)
        report = Report.build(
            title=result.title,
            summary=result.summary,
            sections=[Section(heading="H", body=b) for b in result.bodies],
            sources=result.sources,
            grounded=True,
            searched=True,
        )
        tail = report.markdown.split("## Sources", 1)[1]
        assert [line.split(".")[0] for line in tail.strip().splitlines()] == ["1", "2"]
        cited = {int(n) for n in re.findall(r"(?<!\\)\[(\d+)\]", report.markdown)}
        assert cited == {s.id for s in report.sources}

    def test_ungrounded_report_says_it_is_written_from_the_models_knowledge(self) -> None:
        report = Report.build(title="T", summary="S", sections=[], language="ru")
        assert report.grounded is False and report.sources == []
        assert "знаниям самой модели" in report.markdown

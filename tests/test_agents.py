"""The orchestrator's own writing: the References list it builds from what the agents observed."""

from __future__ import annotations

from oresearcher import grammar as g
from oresearcher.agents import finalize_report

SOURCES = [("https://a.org/1", "One"), ("https://b.org/2", "Two"), ("https://c.org/3", "Three")]


def test_citations_are_renumbered_by_first_use_and_unknown_ones_dropped():
    report, dropped = finalize_report("## Intro\nA claim [3]. Another [1][3]. Made up [9].\n", SOURCES)
    assert dropped == 1
    body, refs = g.split_report(report)
    assert "A claim [1]. Another [2][1]. Made up ." in body
    assert [(r.number, r.url) for r in g.references(report)] == [(1, "https://c.org/3"), (2, "https://a.org/1")]


def test_a_reference_list_the_model_wrote_is_replaced_by_the_observed_one():
    draft = "## Intro\nA claim [2].\n\n## References\n[1]. https://fabricated.example - Fake\n[2]. https://b.org/2 - Two"
    report, _ = finalize_report(draft, SOURCES)
    assert "fabricated" not in report and [r.url for r in g.references(report)] == ["https://b.org/2"]


def test_a_section_titled_like_references_but_without_entries_stays_in_the_report():
    """A small model titles a section "Reference list" and writes prose under it: that is text, not a list to drop
    (dropping it once left a report empty)."""
    draft = "## Reference list\nThe sources agree on the dates [1].\n\n## Conclusion\nIt changed Europe [2].\n"
    report, _ = finalize_report(draft, SOURCES)
    assert "The sources agree on the dates [1]" in report and "It changed Europe [2]" in report
    assert [r.url for r in g.references(report)] == ["https://a.org/1", "https://b.org/2"]

"""Tier 1 of filtering: each hard rule with a trace that passes it and one that breaks it, the verdict listing every
rule broken, near-duplicate candidates, and the reward terms read from the same rules."""

from __future__ import annotations

import pytest
from traces import BLACK_DEATH, OBSERVED, REPORT, REVOLT, UNCITED, crawl, search
from traces import research_trace as trace

from oresearcher import grammar as g
from oresearcher.config import RulesConfig
from oresearcher.criteria import (
    RULES,
    TraceView,
    broken_rules,
    near_duplicates,
    reward_terms,
    rough_token_count,
    script_of,
)

QUERY = "What were the consequences of the Black Death?"
CFG = RulesConfig(min_report_chars=50, context_tokens=100_000)


GOOD = trace([search("Black Death deaths"), crawl(BLACK_DEATH)], [search("Black Death wages")])


def broken(text: str, cfg: RulesConfig = CFG, query: str = QUERY, count_tokens=rough_token_count) -> dict:
    return broken_rules(TraceView.of(query, text), cfg, count_tokens)


def test_the_good_trace_passes_every_rule():
    assert g.is_valid(GOOD)
    assert broken(GOOD) == {}


CASES = {  # rule: (a trace that passes it, a trace that breaks it, settings)
    "format": (GOOD, GOOD.replace("</think>", "", 1), CFG),
    "citations": (GOOD, trace([search("a"), search("b")], report=UNCITED), CFG),
    "fabricated_reference": (GOOD, trace([search("a"), search("b")], report=REPORT.replace(
        REVOLT, "https://example.org/made-up")), CFG),
    "min_tool_calls": (trace([search("a")], [search("b")]), trace([search("a")]), CFG),
    "max_tool_calls": (trace([search("a"), search("b")]), trace([search("a"), search("b"), search("c")]),
                       CFG.model_copy(update={"max_tool_calls_per_subtask": 2})),
    "repeated_calls": (trace([search("black death")], [search("black death")]),  # two agents: not a loop
                       trace([search("black death"), search("Black  Death")]), CFG),
    "tool_error": (trace([search("a"), search("b")], observation=OBSERVED + "\nError: a quoted error on a page"),
                   trace([search("a"), search("b")], observation="Error: page not found in the local corpus"), CFG),
    "report_length": (GOOD, GOOD, CFG.model_copy(update={"min_report_chars": 1000})),
    "context_budget": (GOOD, GOOD, CFG.model_copy(update={"context_tokens": 200})),
    "language": (GOOD, GOOD, CFG),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_passes_a_good_trace_and_names_itself_on_a_bad_one(rule):
    passing, failing, cfg = CASES[rule]
    query = "黑死病对欧洲社会有什么影响？" if rule == "language" else QUERY
    if rule in ("report_length", "context_budget"):  # the same trace passes under the default settings
        assert rule not in broken(passing)
    else:
        assert rule not in broken(passing, cfg)
    found = broken(failing, cfg, query)
    assert rule in found and all(isinstance(p, str) and p for p in found[rule])


def test_every_rule_has_a_case():
    assert set(CASES) == set(RULES)


def test_the_fabricated_reference_rule_reads_only_what_observations_showed():
    """A URL the agent typed into crawl_page whose page failed is not observed: citing it is fabrication."""
    typed = "https://en.wikipedia.org/wiki/Yersinia_pestis"
    text = trace([search("a"), crawl(typed)], observation=OBSERVED,
                 report=REPORT.replace(REVOLT, typed))
    assert "fabricated_reference" in broken(text)


def test_a_report_in_the_query_language_passes():
    zh_report = ("## 引言\n黑死病在十四世纪夺去了欧洲近半人口的生命 [1]。\n\n## 影响\n劳动力短缺使工资上涨，农民起义随之发生 [2]。\n\n"
                 f"## 结论\n这是欧洲社会的转折点 [1][2]。\n\n## 参考文献\n[1]. {BLACK_DEATH} - 黑死病\n[2]. {REVOLT} - 农民起义")
    text = trace([search("黑死病"), search("农民起义")], report=zh_report)
    assert broken(text, query="黑死病对欧洲社会有什么影响？") == {}
    assert "language" in broken(text, query=QUERY)


def test_script_detection():
    assert script_of("What caused the plague?") == "latin"
    assert script_of("黑死病的原因是什么？") == "han"
    assert script_of("黒死病の原因は何ですか？") == "japanese"
    assert script_of("Какие были причины?") == "cyrillic"
    assert script_of("1234 !!") == "unknown"


def test_a_verdict_lists_every_rule_broken_with_what_broke_it():
    text = trace([search("same"), search("same")], observation="Error: search backend unreachable",
                 report="## Only\nNo sources here.")
    found = broken(text, CFG.model_copy(update={"min_report_chars": 100}))
    assert {"citations", "repeated_calls", "tool_error", "report_length"} <= set(found)
    assert any("unreachable" in p for p in found["tool_error"])
    assert any("same" in p for p in found["repeated_calls"])


def test_near_duplicate_candidates_of_one_seed_keep_the_first():
    other = REPORT.replace("killed up to half of Europe", "spread along trade routes from Central Asia in 1347")
    other = other.replace("Wages rose and peasants revolted in 1381", "Cities lost a third of their people")
    assert near_duplicates([("a", REPORT), ("b", REPORT + " "), ("c", other)], 0.8) == {"b": "a"}
    assert near_duplicates([("a", REPORT), ("c", other)], 0.8) == {}


def test_reward_terms_read_the_same_rules():
    assert reward_terms(TraceView.of(QUERY, GOOD), CFG) == {"format": 1.0, "tool": 1.0}
    uncited = trace([search("a"), search("b")], report=UNCITED)
    assert reward_terms(TraceView.of(QUERY, uncited), CFG)["format"] == 0.0
    looping = trace([search("same"), search("same")])
    assert reward_terms(TraceView.of(QUERY, looping), CFG)["tool"] == 0.75
    assert reward_terms(TraceView.of(QUERY, "The Black Death was a plague."), CFG) == {"format": 0.0, "tool": 0.0}


def test_trace_metrics_for_held_out_tables():
    from oresearcher.criteria import mean_metrics, trace_metrics

    good = trace_metrics(TraceView.of(QUERY, GOOD), CFG)
    assert good == {"valid": 1.0, "tool_calls": 3.0, "citations": 4.0, "references": 2.0,
                    "observed_reference_rate": 1.0, "reward_format": 1.0, "reward_tool": 1.0}
    made_up = trace([search("a"), search("b")], report=REPORT.replace(REVOLT, "https://example.org/made-up"))
    bad = trace_metrics(TraceView.of(QUERY, made_up), CFG)
    assert bad["valid"] == 0.0 and bad["observed_reference_rate"] == 0.5 and bad["reward_format"] == 0.0
    prose = trace_metrics(TraceView.of(QUERY, "The Black Death was a plague."), CFG)
    assert prose["valid"] == prose["tool_calls"] == prose["references"] == prose["reward_tool"] == 0.0
    assert mean_metrics([good, bad])["observed_reference_rate"] == 0.75 and mean_metrics([]) == {}

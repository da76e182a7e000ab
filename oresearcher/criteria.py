"""What makes a trace good, each criterion one piece of code: a filter rule, a reward term and a metric.

Tier 1 of filtering (method.md §4) calls `broken_rules`: every hard rule a trace breaks, by name, with what broke
it. GRPO's reward (method.md §3) and the evaluation's format and tool metrics call `reward_terms`, which reads the
same rules, so a trace the filter rejects for its format is the trace the reward scores 0 for format:

    view = TraceView.of(query, trace_text)
    broken_rules(view, cfg.filter.rules, count_tokens)   # {"min_tool_calls": ["1 tool call; at least 2"], ...}
    reward_terms(view, cfg.filter.rules)                  # {"format": 1.0, "tool": 0.75}

Rules read the trace through `oresearcher.grammar` (the one parser and validator); none re-parses it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from oresearcher import grammar as g
from oresearcher.config import RulesConfig

# Grammar violations about the report's sources: counted under their own rules (`citations`, `fabricated_reference`)
# so that a filter report tells a format failure from a sourcing failure.
CITATION_RULES = {g.Rule.MISSING_REFERENCES, g.Rule.MALFORMED_REFERENCE, g.Rule.NO_CITATION,
                  g.Rule.CITATION_WITHOUT_REFERENCE}


@dataclass
class TraceView:
    """A trace with its query, parsed and validated once for every criterion that reads it."""

    query: str
    text: str
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, query: str, text: str | None) -> TraceView:
        return cls(query, text or "")

    @cached_property
    def parsed(self) -> g.ParsedTrace:
        return g.parse(self.text)

    @cached_property
    def violations(self) -> list[g.Violation]:
        return g.validate(self.text)

    @property
    def report(self) -> str:
        return self.parsed.report or ""


TokenCounter = Callable[[str], int]


def rough_token_count(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters a token in English) for when no tokenizer is at hand."""
    return len(text) // 4 + 1


# ------------------------------------------------------------------------------------------------------- rules
# Each rule: (view, settings, token counter) -> what broke it (empty: the trace passes).

def format_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    """The trace grammar (method.md §2), report sources aside."""
    return [str(x) for x in v.violations if x.rule not in CITATION_RULES | {g.Rule.FABRICATED_REFERENCE}]


def citations_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    """In-text citations, each with a References entry of the right form."""
    return [str(x) for x in v.violations if x.rule in CITATION_RULES]


def fabricated_reference_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    """Every reference URL appeared in an observation (`grammar.observed_urls`)."""
    return [str(x) for x in v.violations if x.rule == g.Rule.FABRICATED_REFERENCE]


def min_tool_calls_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    n = len(v.parsed.tool_calls)
    return [f"{n} tool call{'s' * (n != 1)}; at least {cfg.min_tool_calls} needed"] if n < cfg.min_tool_calls else []


def max_tool_calls_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    cap = cfg.max_tool_calls_per_subtask
    return [f"subtask {i} ({st.title[:40]!r}) made {len(st.tool_calls)} tool calls; at most {cap}"
            for i, st in enumerate(v.parsed.subtasks, 1) if len(st.tool_calls) > cap]


def repeated_calls_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    """A query, or a list of URLs, sent twice by one agent: it is looping, not researching. (Two agents of one
    trace may search the same thing: they work in parallel and cannot see each other.)"""
    problems = []
    for i, st in enumerate(v.parsed.subtasks, 1):
        seen: Counter[tuple[str, str]] = Counter()
        for call in st.tool_calls:
            if call.name == g.WEB_SEARCH:
                seen.update((call.name, " ".join(q.lower().split())) for q in call.args)
            else:
                seen[(call.name, " | ".join(sorted(call.args)))] += 1
        problems += [f"subtask {i}: {name} repeated {n}x: {arg[:60]!r}" for (name, arg), n in seen.items() if n > 1]
    return problems


def tool_error_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    """An observation that is a tool's error message: the trace would teach a model to read errors as sources."""
    return [f"observation {i}: {obs.strip()[:80]!r}" for i, obs in enumerate(v.parsed.observations, 1)
            if obs.lstrip().startswith(tuple(cfg.tool_error_prefixes))]


def report_length_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    body, _ = g.split_report(v.report)
    n = len(body.strip())
    return [f"report body has {n} characters; at least {cfg.min_report_chars}"] if n < cfg.min_report_chars else []


def context_budget_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    """The query and trace fit the training context (`context_tokens`): a longer one would be cut mid-trace."""
    if cfg.context_tokens is None:
        return []
    n = count_tokens(v.query) + count_tokens(v.text)
    return [f"{n} tokens; the context budget is {cfg.context_tokens}"] if n > cfg.context_tokens else []


def language_rule(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter) -> list[str]:
    if not cfg.same_language or not v.report:
        return []
    want, got = script_of(v.query), script_of(g.strip_citations(v.report))
    return [f"the query is in {want} script, the report in {got}"] if want != got and "unknown" not in (want, got) \
        else []


RULES: dict[str, Callable[[TraceView, RulesConfig, TokenCounter], list[str]]] = {
    "format": format_rule,
    "citations": citations_rule,
    "fabricated_reference": fabricated_reference_rule,
    "min_tool_calls": min_tool_calls_rule,
    "max_tool_calls": max_tool_calls_rule,
    "repeated_calls": repeated_calls_rule,
    "tool_error": tool_error_rule,
    "report_length": report_length_rule,
    "context_budget": context_budget_rule,
    "language": language_rule,
}
NEAR_DUPLICATE = "near_duplicate"  # a rule across the candidates of one seed (`near_duplicates`), not of one trace

# Which rules each reward term reads (method.md §3: R_format, R_tool).
FORMAT_TERM = ("format", "citations", "fabricated_reference")
TOOL_TERM = ("min_tool_calls", "max_tool_calls", "repeated_calls", "tool_error")


def broken_rules(v: TraceView, cfg: RulesConfig, count_tokens: TokenCounter = rough_token_count,
                 only: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Every rule `v` breaks, with what broke it, in `RULES` order. Empty: the trace passes tier 1."""
    out = {}
    for name in only or RULES:
        if problems := RULES[name](v, cfg, count_tokens):
            out[name] = problems
    return out


def reward_terms(v: TraceView, cfg: RulesConfig) -> dict[str, float]:
    """R_format: 1 when the trace passes every format rule, else 0. R_tool: the share of tool rules it passes, and
    0 with no tool call at all (the other tool rules pass vacuously then: prose would earn 0.75 for using no tool)."""
    broken = broken_rules(v, cfg, only=FORMAT_TERM + TOOL_TERM)
    tool = sum(r not in broken for r in TOOL_TERM) / len(TOOL_TERM) if v.parsed.tool_calls else 0.0
    return {"format": float(not any(r in broken for r in FORMAT_TERM)), "tool": tool}


def trace_metrics(v: TraceView, cfg: RulesConfig) -> dict[str, float]:
    """Per-trace numbers for held-out and evaluation tables, from the same parser and rules: validity, tool calls,
    citations, and the share of references that point at something an observation showed."""
    refs = g.references(v.report)
    observed = g.observed_urls(v.parsed)
    return {"valid": float(not v.violations), "tool_calls": float(len(v.parsed.tool_calls)),
            "citations": float(len(g.citations(v.report))), "references": float(len(refs)),
            "observed_reference_rate": sum(r.url.rstrip(".,;") in observed for r in refs) / len(refs) if refs else 0.0,
            **{f"reward_{k}": x for k, x in reward_terms(v, cfg).items()}}


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over traces (0 traces: an empty dict, not a division by zero)."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


# ------------------------------------------------------------------------------------------ across candidates

def near_duplicates(reports: list[tuple[str, str]], threshold: float) -> dict[str, str]:
    """For candidates of one seed as (id, report) in order: {later id: earlier id} of each near-duplicate report
    (Jaccard of character 5-grams >= threshold); the first of each group stays."""
    from oresearcher.seeds import jaccard, shingles

    kept: list[tuple[str, set[str]]] = []
    dupes = {}
    for rid, report in reports:
        sh = shingles(g.strip_citations(report))
        if match := next((kid for kid, ksh in kept if jaccard(sh, ksh) >= threshold), None):
            dupes[rid] = match
        else:
            kept.append((rid, sh))
    return dupes


# --------------------------------------------------------------------------------------------------- language

_SCRIPTS = (("CJK", "han"), ("HIRAGANA", "japanese"), ("KATAKANA", "japanese"), ("HANGUL", "korean"),
            ("CYRILLIC", "cyrillic"), ("ARABIC", "arabic"), ("HEBREW", "hebrew"), ("DEVANAGARI", "devanagari"),
            ("GREEK", "greek"), ("THAI", "thai"), ("LATIN", "latin"))
_WORDISH = re.compile(r"\w", re.UNICODE)


def script_of(text: str) -> str:
    """The writing system most of `text`'s letters are in ('latin', 'han', 'japanese', ...; 'unknown' if none).
    Kana outweighs kanji, so Japanese is told from Chinese; a script name is what a report and its query must
    share (a language detector would need a model; the script tells English from Chinese, which is the case
    the benchmarks have)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isdigit() or not _WORDISH.match(ch):
            continue
        name = unicodedata.name(ch, "")
        script = next((s for prefix, s in _SCRIPTS if name.startswith(prefix)), None)
        if script:
            counts[script] += 3 if script == "japanese" else 1
    if not counts:
        return "unknown"
    return counts.most_common(1)[0][0]

"""The decoding grammars derived from the trace grammar: each accepts what the validator accepts and rejects what
it rejects. Traces are written with the grammar module's own serializer, assembled as the agent runtime assembles
them, validated whole; each piece a model writes (plan, step, answer, report) goes through its call's grammar in
llguidance with the embedded model's tokenizer, as in decoding."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oresearcher import grammar as g
from oresearcher.agents import SubtaskRun, assemble_trace, finalize_report
from oresearcher.config import GuideConfig

CAPS = GuideConfig()
POOL = [f"https://en.wikipedia.org/wiki/Topic_{i}" for i in range(6)]


@pytest.fixture(scope="module")
def accepts():
    """accepts(guide, text): whether `text`, tokenized by the embedded model's tokenizer, completes `guide`."""
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    from models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    engine = llguidance.hf.from_tokenizer(tok)

    def check(guide: g.Guide, text: str) -> bool:
        matcher = llguidance.LLMatcher(engine, llguidance.grammar_from("gbnf", guide.gbnf), log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher.consume_tokens(tok.encode(text, add_special_tokens=False)) and matcher.is_accepting()

    return check


# ------------------------------------------------------------------------------------- traces, piece by piece
words = st.text(alphabet=st.characters(categories=("L", "N"), max_codepoint=0x9FFF), min_size=1, max_size=8)


def prose(max_chars: int, min_words: int = 1):
    return st.lists(words, min_size=min_words, max_size=6).map(" ".join).filter(lambda t: 5 <= len(t) <= max_chars)


def sentence(max_chars: int):
    """Text of a block the grammars close only after a sentence end (think, plan, a subtask line)."""
    return st.tuples(prose(max_chars - 1), st.sampled_from(".!?")).map("".join)


@st.composite
def agent(draw, pool: list[str]):
    """One subtask agent's steps: searches that observe URLs from `pool`, crawls of observed ones, an answer."""
    observed: list[str] = []
    steps: list[tuple[str, list[str], bool, bool]] = []  # (text the model wrote, observed before, may_call, may_answer)
    parts: list[str] = []
    calls = draw(st.integers(1, 2))
    for k in range(calls):
        think = g.block(g.THINK, draw(sentence(CAPS.think)))
        plan = g.block(g.PLAN, draw(sentence(CAPS.plan))) + "\n" if draw(st.booleans()) else ""
        if observed and draw(st.booleans()):
            action = g.tool_call_text(g.CRAWL_PAGE, [draw(st.sampled_from(observed))])
        else:
            action = g.tool_call_text(g.WEB_SEARCH, [draw(prose(CAPS.query))], draw(st.integers(1, CAPS.max_num)))
        text = f"{think}\n{plan}{action}"
        steps.append((text, list(observed), True, k > 0))
        shown = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        observation = g.observation_text("\n".join(f"{n}. [Title {u[-1]}]({u})" for n, u in enumerate(shown, 1)))
        parts += [text, observation]
        observed += [u for u in shown if u not in observed]
    cited = draw(st.lists(st.sampled_from(observed), min_size=1, max_size=CAPS.answer_sentences))
    answer = " ".join(f"{draw(prose(CAPS.answer_sentence))} [{u}]." for u in cited)
    text = g.block(g.THINK, draw(sentence(CAPS.think))) + "\n" + g.block(g.SUBTASK_ANSWER, answer)
    steps.append((text, list(observed), True, True))
    parts.append(text)
    run = SubtaskRun(draw(sentence(CAPS.subtask_line)), "\n".join(parts), answer,
                     [(u, f"Title {u[-1]}") for u in observed])
    return run, steps


@st.composite
def research_trace(draw):
    runs_steps = draw(st.lists(agent(POOL), min_size=1, max_size=3))
    runs = [r for r, _ in runs_steps]
    sources = list(dict.fromkeys(src for r in runs for src in r.sources))
    plan = "".join(f"{n}. {r.title}\n" for n, r in enumerate(runs, 1))
    sections = draw(st.integers(CAPS.min_sections, CAPS.max_sections))
    draft = "".join(
        f"## {draw(prose(CAPS.heading))}\n" +
        " ".join(f"According to [{draw(st.integers(1, len(sources)))}], {draw(prose(CAPS.report_sentence, 2))}."
                 for _ in range(draw(st.integers(1, CAPS.report_sentences)))) + "\n\n"
        for _ in range(sections))
    report, dropped = finalize_report(draft, sources)
    assert dropped == 0
    return {"plan": plan, "runs": runs, "steps": [s for _, steps in runs_steps for s in steps], "draft": draft,
            "sources": sources, "trace": assemble_trace([r.title for r in runs], runs, report)}


SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])


@SLOW
@given(research_trace())
def test_what_the_validator_accepts_each_grammar_accepts(accepts, t):
    assert g.validate(t["trace"]) == []
    n = len(t["runs"])
    assert accepts(g.planner_guide(n, n, CAPS), t["plan"])
    for text, observed, may_call, may_answer in t["steps"]:
        assert accepts(g.step_guide(observed, may_call=may_call, may_answer=may_answer, caps=CAPS), text), text
    assert accepts(g.report_guide(len(t["sources"]), CAPS), t["draft"])


# Each breaks the trace for the validator (the rule it reports) and the piece for its grammar.
STEP_BREAKS = {
    "unclosed_think": (lambda s: s.replace("</think>", "", 1), g.Rule.UNCLOSED_TAG),
    "plan_before_think": (lambda s: re.sub(r"(<think>.*?</think>)\n(<plan>.*?</plan>)", r"\2\n\1", s, flags=re.S),
                          g.Rule.STEP_ORDER),
    "empty_think": (lambda s: re.sub(r"<think>.*?</think>", "<think>\n \n</think>", s, count=1, flags=re.S),
                    g.Rule.EMPTY_BLOCK),
    "tag_in_free_text": (lambda s: s.replace("<think>\n", "<think>\n<plan>\n", 1), g.Rule.UNCLOSED_TAG),
    "num_out_of_range": (lambda s: re.sub(r"&num=\d+", "&num=50", s), g.Rule.BAD_TOOL_ARGS),
    "two_tool_calls": (lambda s: s.replace("</web_search>", "</web_search>\n<web_search>query=again&num=3"
                                                            "</web_search>", 1), g.Rule.TOOL_WITHOUT_OBSERVATION),
    "text_outside_tags": (lambda s: "Let me think.\n" + s, g.Rule.TEXT_OUTSIDE_TAGS),
}


@SLOW
@given(research_trace(), st.sampled_from(sorted(STEP_BREAKS)), st.data())
def test_what_the_validator_rejects_the_step_grammar_rejects(accepts, t, name, data):
    break_step, rule = STEP_BREAKS[name]
    candidates = [s for s in t["steps"] if break_step(s[0]) != s[0]]
    if not candidates:
        return  # this trace has nothing this break applies to (no plan, no search)
    text, observed, may_call, may_answer = data.draw(st.sampled_from(candidates))
    broken = t["trace"].replace(text, break_step(text), 1)
    assert rule in {v.rule for v in g.validate(broken)}, (name, broken)
    assert not accepts(g.step_guide(observed, may_call=may_call, may_answer=may_answer, caps=CAPS), break_step(text))


@SLOW
@given(research_trace())
def test_a_report_citing_a_source_that_does_not_exist_is_rejected_by_both(accepts, t):
    n = len(t["sources"])
    draft = re.sub(r"\[\d+\]", f"[{n + 1}]", t["draft"], count=1)
    report = draft + f"\n## References\n[{n + 1}]. https://fabricated.example/x - Made up"  # as a model would
    broken = t["trace"].replace(t["trace"][t["trace"].index("<suggested_answer>"):],
                                g.block(g.SUGGESTED_ANSWER, report))
    assert g.Rule.FABRICATED_REFERENCE in {v.rule for v in g.validate(broken)}
    assert not accepts(g.report_guide(n, CAPS), draft)


@SLOW
@given(research_trace(), st.data())
def test_citing_or_crawling_what_was_never_observed_is_rejected(accepts, t, data):
    text, observed, _call, _answer = data.draw(st.sampled_from([s for s in t["steps"] if s[1]]))
    unseen = "https://never.observed.example/page"
    crawl = g.block(g.THINK, "Read it.") + "\n" + g.tool_call_text(g.CRAWL_PAGE, [unseen])
    answer = g.block(g.THINK, "Done.") + "\n" + g.block(g.SUBTASK_ANSWER, f"A claim [{unseen}].")
    for bad in (crawl, answer):
        assert not accepts(g.step_guide(observed, caps=CAPS), bad)
    assert not accepts(g.answer_guide(observed, CAPS), g.block(g.SUBTASK_ANSWER, f"A claim [{unseen}]."))


def test_every_free_text_block_is_capped(accepts):
    """A model that never closes its <think> is cut off by the grammar, not by the token limit."""
    guide = g.step_guide([], caps=CAPS)
    assert accepts(guide, g.block(g.THINK, "x" * (CAPS.think - 2) + ".") + "\n" +
                   g.tool_call_text(g.WEB_SEARCH, ["qq"], 3))
    assert not accepts(guide, g.block(g.THINK, "x" * (CAPS.think + 10)) + "\n" +
                       g.tool_call_text(g.WEB_SEARCH, ["qq"], 3))
    assert guide.max_tokens * 2 >= guide.max_chars  # the token budget fits the longest text the grammar allows
    for inside in ("a <plan> b", "a </think> b", "x < y"):  # free text never holds a tag, or what could start one
        raw = f"<think>\n{inside}\n</think>\n"  # as a model writes it (block() would escape it)
        assert not accepts(guide, raw + g.tool_call_text(g.WEB_SEARCH, ["qq"], 3)), inside
    assert accepts(guide, g.block(g.THINK, "a <plan> b.") + "\n" + g.tool_call_text(g.WEB_SEARCH, ["qq"], 3))


def test_blocks_close_after_a_sentence_end(accepts):
    """A teacher cut off at its cap mid-sentence would teach a student to close blocks at a character count it
    cannot see: think, plan, a subtask line, and each claim of an answer or report end with ".", "!" or "?";
    a claim is one sentence: an answer's citation right before its end, a report's at its start."""
    search = "\n" + g.tool_call_text(g.WEB_SEARCH, ["qq"], 3)
    guide = g.step_guide([], caps=CAPS)
    for ending in (".", "!", "?", ".\n"):
        assert accepts(guide, f"<think>\nI search for it{ending}</think>{search}"), ending
    assert not accepts(guide, g.block(g.THINK, "I search for the") + search)
    assert not accepts(guide, g.block(g.THINK, "Fine.") + "\n" + g.block(g.PLAN, "then the") + search)
    assert not accepts(g.planner_guide(1, 1, CAPS), "1. The causes of the\n")
    url = POOL[0]
    answers = g.answer_guide([url], CAPS)
    assert accepts(answers, g.block(g.SUBTASK_ANSWER, f"A claim [{url}]."))
    assert accepts(answers, g.block(g.SUBTASK_ANSWER, f"A claim [{url}]. Another one [{url}]!"))
    # each claim is one sentence that ends with its citation: no uncited sentence, no citation inside a word
    for cut in (f"A claim [{url}] and so it went.", f"A claim [{url}]. And so it went.", f"A cla[{url}].",
                f"A claim. Another one [{url}]."):
        assert not accepts(answers, g.block(g.SUBTASK_ANSWER, cut)), cut
    # a report's claim opens with its citation: what a student writing fluent sentences of its own keeps
    reports = g.report_guide(2, CAPS)
    sections = "## Causes\nAccording to [1], a claim. According to [2], another one!\n\n" * CAPS.min_sections
    assert accepts(reports, sections)
    for cut in ("According to [1], a claim\n\n", "According to [1], a claim. And so\n\n", "A claim [1].\n\n",
                "According to [1], a claim.According to [2], glued.\n\n", "According to [1], one. Two.\n\n"):
        assert not accepts(reports, sections + "## Effects\n" + cut), cut


def test_a_search_query_is_words_not_markup(accepts):
    """The teacher's query holds words (a question mark, an apostrophe, a hyphen, any script), never quotes,
    attributes or code: a small teacher free to write them filled queries with `"..." type="box"` up to the cap, and
    its students then wrote markup where `&num=` belongs."""
    guide = g.step_guide([], caps=CAPS)
    think = g.block(g.THINK, "I search for it.") + "\n"
    for query in ("How did the Black Death spread?", "Kant's ethics, a short-list", "黑死病的传播"):
        assert accepts(guide, think + f"<web_search>query={query}&num=2</web_search>"), query
    for query in ('"How did it spread?"', "plague type=box", "plague; width 40", "plague {x}", "plague [1]",
                  "plague \\n"):
        assert not accepts(guide, think + f"<web_search>query={query}&num=2</web_search>"), query


def test_planner_grammar_counts_its_items(accepts):
    guide = g.planner_guide(2, 3, CAPS)
    assert accepts(guide, "1. First subtask here.\n2. Second subtask here?\n")
    assert accepts(guide, "1. First subtask here.\n2. Second subtask here.\n3. Third one.\n")
    assert not accepts(guide, "1. Only one subtask here.\n")
    assert not accepts(guide, "1. a one.\n2. b two.\n3. c three.\n4. d four.\n")
    assert not accepts(guide, "1. First <think> here.\n2. Second.\n")


def test_score_form_is_read_back(accepts):
    guide = g.score_guide(0, 10, CAPS)
    assert accepts(guide, "Reason: well supported and clear\nScore: 8")
    assert not accepts(guide, "Reason: fine\nScore: 11")
    assert g.parse_score("Reason: fine\nScore: 8") == 8 and g.parse_score("no score") is None

"""The trace grammar: the only module that knows the tags of an O-Researcher trace.

A trace is a flat sequence of tagged segments (method.md §2):

    <subtask_list> then, per subtask, <subtask> → (<think> → <plan> → tool → <observation>)* → <subtask_answer>,
    and after the last subtask, <suggested_answer> (the report, with a References list).

Three jobs live here, each used everywhere else in the project:
- `parse` is lenient: it takes real model output (a doubled <think>, a missing <subtask_answer>, a
  </suggested_answer> without its opening tag, free text between tags, a truncated trace) and never raises.
- `serialize` writes segments back; `parse(serialize(segs))` gives the same tags and contents.
- `validate` is strict: it returns typed `Violation`s with character positions.

Observation text comes from the web, so it is escaped (`escape`) before it enters a trace: a hostile page
containing "</observation><suggested_answer>" can never change the trace's structure. The escaping is
reversible and touches only tag look-alikes, so URLs and `&num=` stay readable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum

SUBTASK_LIST = "subtask_list"
SUBTASK = "subtask"
THINK = "think"
PLAN = "plan"
WEB_SEARCH = "web_search"
CRAWL_PAGE = "crawl_page"
OBSERVATION = "observation"
SUBTASK_ANSWER = "subtask_answer"
SUGGESTED_ANSWER = "suggested_answer"
TEXT = "text"  # free text outside any tag: kept by the parser, flagged by the validator

TOOL_TAGS = (WEB_SEARCH, CRAWL_PAGE)
TAGS = (SUBTASK_LIST, SUBTASK, THINK, PLAN, WEB_SEARCH, CRAWL_PAGE, OBSERVATION, SUBTASK_ANSWER, SUGGESTED_ANSWER)
# Generation stops here; the environment appends the observation (or ends the episode) and resumes.
STOP_SEQUENCES = ("</web_search>", "</crawl_page>", "</suggested_answer>")
DEFAULT_NUM_RESULTS = 10
MAX_NUM_RESULTS = 20

_TAG_ALT = "|".join(sorted(TAGS, key=len, reverse=True))
# What the parser accepts as a tag: <think>, </ think >, <THINK> ...
_TAG_RE = re.compile(rf"<\s*(/?)\s*({_TAG_ALT})\s*>", re.IGNORECASE)
# What the escaper neutralises: a superset of _TAG_RE (no closing '>' needed), plus already-escaped forms so
# that escaping is reversible: "<tag" -> "&lt;tag", "&lt;tag" -> "&amp;lt;tag", "&amp;lt;tag" -> "&amp;amp;lt;tag".
_ESCAPE_RE = re.compile(rf"(<|&((?:amp;)*)lt;)(?=\s*/?\s*(?:{_TAG_ALT})\b)", re.IGNORECASE)
_UNESCAPE_RE = re.compile(rf"&((?:amp;)*)lt;(?=\s*/?\s*(?:{_TAG_ALT})\b)", re.IGNORECASE)


def escape(text: str) -> str:
    """Neutralise every tag look-alike in `text` (observation text, free text) so it cannot open or close a tag."""
    # "<" becomes "&lt;"; an entity form gains one "amp;" after its "&", keeping its own spelling ("&LT;" too)
    return _ESCAPE_RE.sub(lambda m: "&lt;" if m.group(1) == "<" else "&amp;" + m.group(1)[1:], text)


def unescape(text: str) -> str:
    """Inverse of `escape`."""
    return _UNESCAPE_RE.sub(lambda m: "<" if not m.group(1) else "&" + m.group(0)[5:], text)


@dataclass
class Segment:
    """One tagged block. `opened`/`closed` record whether the source had the opening/closing tag."""

    tag: str
    content: str
    start: int = 0  # character offset of the block in the parsed text
    end: int = 0
    opened: bool = True
    closed: bool = True


@dataclass
class ParseIssue:
    """Something the lenient parser had to work around, reported by `validate`."""

    kind: str  # "stray_close"
    tag: str
    position: int


@dataclass
class ToolCall:
    name: str  # "web_search" or "crawl_page"
    args: list[str]  # queries or URLs
    num: int | None = None  # web_search only: total results across the queries
    raw: str = ""
    error: str | None = None  # why the arguments are unusable, if they are


@dataclass
class Subtask:
    title: str
    steps: list[Segment] = field(default_factory=list)  # think / plan / tool / observation, in order
    answer: str | None = None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [parse_tool_call(s.tag, s.content) for s in self.steps if s.tag in TOOL_TAGS]


@dataclass
class ParsedTrace:
    segments: list[Segment]
    issues: list[ParseIssue]
    subtask_list: list[str]
    subtasks: list[Subtask]
    report: str | None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for st in self.subtasks for c in st.tool_calls]

    @property
    def observations(self) -> list[str]:
        return [s.content for s in self.segments if s.tag == OBSERVATION]


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def parse_segments(text: str) -> tuple[list[Segment], list[ParseIssue]]:
    """Split `text` into segments, leniently. Never raises."""
    segments: list[Segment] = []
    issues: list[ParseIssue] = []
    open_tag: str | None = None
    open_start = content_start = 0
    free_start = 0  # start of the free text since the last segment

    def add_free_text(until: int) -> None:
        chunk = text[free_start:until]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            segments.append(Segment(TEXT, unescape(chunk.strip()), free_start + lead, until))

    for m in _TAG_RE.finditer(text):
        is_close, tag = m.group(1) == "/", m.group(2).lower()
        if open_tag == OBSERVATION and not (is_close and tag == OBSERVATION):
            continue  # observation text is the environment's: only its own closing tag ends it
        if not is_close:
            if open_tag is not None:  # a new block starts before the last one closed
                segments.append(Segment(open_tag, unescape(text[content_start : m.start()].strip()),
                                        open_start, m.start(), closed=False))
            else:
                add_free_text(m.start())
            open_tag, open_start, content_start = tag, m.start(), m.end()
        elif open_tag == tag:
            segments.append(Segment(tag, unescape(text[content_start : m.start()].strip()), open_start, m.end()))
            open_tag, free_start = None, m.end()
        elif open_tag is None and text[free_start : m.start()].strip():
            # "report text</suggested_answer>": the free text before a lone closing tag is that block's content
            chunk = text[free_start : m.start()]
            lead = len(chunk) - len(chunk.lstrip())
            segments.append(Segment(tag, unescape(chunk.strip()), free_start + lead, m.end(), opened=False))
            free_start = m.end()
        else:
            issues.append(ParseIssue("stray_close", tag, m.start()))
            if open_tag is None:
                free_start = m.end()
    if open_tag is not None:
        segments.append(Segment(open_tag, unescape(text[content_start:].strip()), open_start, len(text), closed=False))
    else:
        add_free_text(len(text))
    return segments, issues


def parse(text: str) -> ParsedTrace:
    """Parse a trace leniently into segments and its structure (subtasks, tool calls, report)."""
    segments, issues = parse_segments(text)
    subtask_list: list[str] = []
    subtasks: list[Subtask] = []
    report: str | None = None
    for seg in segments:
        if seg.tag == SUBTASK_LIST and not subtask_list:
            subtask_list = split_list_items(seg.content)
        elif seg.tag == SUBTASK:
            subtasks.append(Subtask(seg.content))
        elif seg.tag == SUBTASK_ANSWER and subtasks:
            subtasks[-1].answer = seg.content
        elif seg.tag in (THINK, PLAN, OBSERVATION, *TOOL_TAGS) and subtasks:
            subtasks[-1].steps.append(seg)
        elif seg.tag == SUGGESTED_ANSWER:
            report = seg.content
    return ParsedTrace(segments, issues, subtask_list, subtasks, report)


_LIST_ITEM_RE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")


def split_list_items(content: str) -> list[str]:
    """Items of a <subtask_list>: numbered or bulleted lines; plain non-empty lines if there are no markers."""
    lines = [ln for ln in content.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := _LIST_ITEM_RE.match(ln))]
    return items or [ln.strip() for ln in lines]


_NUM_RE = re.compile(r"&\s*(?:serp_)?num\s*=\s*(\S*)\s*$", re.IGNORECASE)


def parse_tool_call(name: str, content: str) -> ToolCall:
    """Arguments of a tool tag: `query=Q1 | Q2&num=N` or `url=U1 | U2` (the `query=`/`url=` prefix is optional)."""
    body, num, error = content.strip(), None, None
    if name == WEB_SEARCH:
        if m := _NUM_RE.search(body):
            body = body[: m.start()]
            if m.group(1).isdigit() and 1 <= int(m.group(1)) <= MAX_NUM_RESULTS:
                num = int(m.group(1))
            else:
                error = f"num must be an integer in 1..{MAX_NUM_RESULTS}, got {m.group(1)!r}"
        body = re.sub(r"^\s*query\s*=", "", body, flags=re.IGNORECASE)
    else:
        body = re.sub(r"^\s*url\s*=", "", body, flags=re.IGNORECASE)
    args = [a.strip() for a in body.split("|") if a.strip()]
    if not args:
        error = error or f"{name} has no {'query' if name == WEB_SEARCH else 'url'}"
    elif name == CRAWL_PAGE and (bad := [u for u in args if not re.match(r"^https?://\S+$", u, re.IGNORECASE)]):
        error = f"not an http(s) URL: {bad[0]!r}"
    return ToolCall(name, args, num if name == WEB_SEARCH else None, content, error)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def serialize(segments: list[Segment]) -> str:
    """Write segments as trace text, each block on its own lines; contents are escaped."""
    out = []
    for seg in segments:
        body = escape(seg.content)
        out.append(body if seg.tag == TEXT else f"<{seg.tag}>\n{body}\n</{seg.tag}>")
    return "\n".join(out)


def block(tag: str, content: str) -> str:
    """One block as trace text (content escaped)."""
    return serialize([Segment(tag, content)])


def tool_call_text(name: str, args: list[str], num: int | None = None) -> str:
    """`<web_search>query=a | b&num=10</web_search>` or `<crawl_page>url=U</crawl_page>`."""
    key = "query" if name == WEB_SEARCH else "url"
    body = f"{key}={' | '.join(args)}" + (f"&num={num}" if num is not None and name == WEB_SEARCH else "")
    return f"<{name}>{escape(body)}</{name}>"


def observation_text(result: str) -> str:
    """The block the environment appends after a tool call. The result is escaped: it can never close the block."""
    return block(OBSERVATION, result)


def complete_stop(generated: str, stop_sequence: str | None, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """Put back the closing tag a generation stopped on (APIs strip the stop sequence from the text).

    When the backend does not say which stop matched, an unclosed final block whose closing tag is one of
    `stops` is closed: that is the only way generation can have stopped there.
    """
    if stop_sequence:
        return generated + stop_sequence
    segments, _ = parse_segments(generated)
    if segments and not segments[-1].closed and f"</{segments[-1].tag}>" in stops:
        return generated.rstrip() + f"</{segments[-1].tag}>" if segments[-1].tag in TOOL_TAGS else \
            generated.rstrip() + f"\n</{segments[-1].tag}>"
    return generated


def last_tool_call(generated: str) -> ToolCall | None:
    """The tool call a generation stopped on (text ending at, or just before, a tool's closing tag)."""
    segments, _ = parse_segments(generated)
    if segments and segments[-1].tag in TOOL_TAGS:
        return parse_tool_call(segments[-1].tag, segments[-1].content)
    return None


# ---------------------------------------------------------------------------------------------------------------
# The report: in-text citations and the References list


@dataclass
class Reference:
    number: int
    url: str
    title: str
    position: int  # offset in the report


@dataclass
class Citation:
    number: int
    position: int  # offset in the report
    sentence: str  # the claim the citation follows


# The References heading in the forms real reports use (method.md §2): "## References", "**References:**",
# "## 7. 参考文献（url - title）", "## 参考文献（文中按序引用）", "Sources"; a trailing note in parentheses is allowed.
REFERENCE_HEADINGS = ("references", "reference list", "sources", "bibliography", "参考文献", "参考资料", "引用文献",
                      "引用来源", "参考来源")
_REFS_HEADING_RE = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?(?:\d+[.、)][ \t]*)?\**[ \t]*(?:" + "|".join(REFERENCE_HEADINGS) + r")[ \t]*"
    r"(?:[(（][^)）\n]*[)）])?[ \t]*\**[ \t]*[:：]?[ \t]*\**[ \t]*$", re.IGNORECASE | re.MULTILINE)
_REF_LINE_RE = re.compile(r"^\s*\[(\d+)\]\.?\s*(\S+)(?:\s+[-–—]\s*(.*?))?\s*$")
# A reference line "[1]. https://..." is not a citation, "... claim [1]." is.
_CITE_GROUP_RE = re.compile(r"\[(\d+(?:\s*[,;–-]\s*\d+)*)\](?!\.?\s*https?://)")


def split_report(report: str) -> tuple[str, str | None]:
    """(body, references section) of a report; the section is None when there is no References heading."""
    headings = list(_REFS_HEADING_RE.finditer(report))
    if not headings:
        return report, None
    h = headings[-1]
    return report[: h.start()], report[h.end() :]


def references(report: str) -> list[Reference]:
    """Entries `[n]. URL - Title` of the References list, in order."""
    body, section = split_report(report)
    if section is None:
        return []
    refs, offset = [], len(report) - len(section)
    for line in section.splitlines(keepends=True):
        if m := _REF_LINE_RE.match(line):
            refs.append(Reference(int(m.group(1)), m.group(2), (m.group(3) or "").strip(), offset))
        offset += len(line)
    return refs


def malformed_reference_lines(report: str) -> list[tuple[int, str]]:
    """(offset, line) of non-empty lines in the References section that are not `[n]. URL - Title`."""
    _, section = split_report(report)
    if section is None:
        return []
    bad, offset = [], len(report) - len(section)
    for line in section.splitlines(keepends=True):
        m = _REF_LINE_RE.match(line)
        if line.strip() and not (m and re.match(r"^https?://", m.group(2), re.IGNORECASE)):
            bad.append((offset, line.strip()))
        offset += len(line)
    return bad


def citations(report: str) -> list[Citation]:
    """In-text citations `[n]`, `[n][m]`, `[n, m]`, `[n-m]` in the report body (not the References list)."""
    body, _ = split_report(report)
    found = []
    for m in _CITE_GROUP_RE.finditer(body):
        sentence_start = max(body.rfind(". ", 0, m.start()), body.rfind("\n", 0, m.start())) + 1
        sentence = body[sentence_start : m.start()].strip()
        for number in _expand_citation_group(m.group(1)):
            found.append(Citation(number, m.start(), sentence))
    return found


def _expand_citation_group(group: str) -> list[int]:
    numbers = []
    for part in re.split(r"\s*[,;]\s*", group):
        if m := re.fullmatch(r"(\d+)\s*[–-]\s*(\d+)", part):
            lo, hi = int(m.group(1)), int(m.group(2))
            numbers.extend(range(lo, hi + 1) if 0 <= hi - lo <= 50 else [lo, hi])
        else:
            numbers.append(int(part))
    return numbers


def rewrite_citations(body: str, rewrite) -> str:
    """Replace each in-text citation group with `rewrite(numbers)` (e.g. renumbering, or dropping unknown ones)."""
    return _CITE_GROUP_RE.sub(lambda m: rewrite(_expand_citation_group(m.group(1))), body)


def strip_citations(report: str) -> str:
    """The report body without in-text citations or the References list (RACE judges reports this way)."""
    body, _ = split_report(report)
    return re.sub(r"[ \t]*" + _CITE_GROUP_RE.pattern, "", body).strip()


# The environment renders every search result and every page it shows as a markdown link `[title](url)`
# (research/environment.py): those links are what the agent has observed, and the only URLs it may cite.
# A URL may hold balanced parentheses (".../wiki/Amazon_(company)"): the link's own ")" is the one after them.
_SOURCE_LINK_RE = re.compile(r"\[([^\]\n]*)\]\((https?://(?:[^()\s]|\([^()\s]*\))+)\)")


def sources_in_observation(text: str) -> list[tuple[str, str]]:
    """(url, title) of every result or page an observation showed, in order."""
    return [(m.group(2), m.group(1)) for m in _SOURCE_LINK_RE.finditer(text)]


def observed_urls(trace: ParsedTrace) -> set[str]:
    """URLs the environment actually showed the agent: a URL it only typed (a failed crawl) is not observed."""
    return {url for obs in trace.observations for url, _title in sources_in_observation(obs)}


# ---------------------------------------------------------------------------------------------------------------
# Decoding grammars: what each kind of model call may write, derived from the tags above, as GBNF. llama.cpp's
# server reads GBNF as it is, vLLM's structured outputs (xgrammar and guidance backends) too, and the in-process
# engine through llguidance's GBNF reader: one grammar per call, whatever serves the model. Grammars that depend
# on the run (the URLs observed so far, the number of sources) are built per call; every free-text block has a
# character cap (`GuideConfig`), and free text can never hold a "<", so it can never open or close a tag.


@dataclass(frozen=True)
class Guide:
    """The decoding grammar of one model call, and the most characters it lets the model write."""

    kind: str  # "planner", "step", "answer", "report", "score"
    gbnf: str
    max_chars: int

    @property
    def max_tokens(self) -> int:
        """A token budget the grammar always fits in (2 characters a token is below any real text's average, ~4 for
        English), so that a guided call ends by its grammar, never cut at the token limit."""
        return self.max_chars // 2 + 16


def _q(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def _alt(options: list[str]) -> str:
    return "(" + " | ".join(_q(o) for o in options) + ")"


def _gbnf(rules: dict[str, str]) -> str:
    return "\n".join(f"{name} ::= {body}" for name, body in rules.items())


# Free text never holds a "<", so every block's text ends exactly where its closing tag (or the next tag) begins,
# for a grammar engine's lexer as much as for the parser; and it holds something besides white space.
_WS = r"[ \t\n]{0,4}"
_FREE = r"[^<]"
_LINE = r"[^<\n]"
# A search query is words: no quotes, no `key=value` attributes, no code punctuation. A small teacher, let free
# there, wrote `query="..." type="box" width="40%"` up to the cap, and its students learned to write markup where
# a query ends instead of `&num=` (their held-out traces left <web_search> unclosed).
_QUERY = r'[^<>|&\n"=;{}\[\]\\]'
# A claim of an answer or report: no tags, no brackets (those are citations), no headings, and no sentence end: each
# claim is one sentence, then ".", "!" or "?", and carries its citation: an answer's closes it, a report's opens with
# it (`report_guide`). So no sentence goes uncited (a small teacher otherwise strings several uncited sentences
# together before the one its citation ends). The cost: no decimal point ("3.5") inside a claim.
_CLAIM = r"[^<\[\]#.!?]"
_REPORT_CLAIM = r"[^<\[\]#\n.!?]"  # a report's claim stays in its paragraph


def _text(cap: int, chars: str = _FREE, last: str | None = None) -> str:
    """A free-text rule: a little white space, one visible character, then at most `cap` characters more; with
    `last`, at most `cap` characters, the last of them matching `last` (`_SENTENCE`, or a visible character)."""
    if last:
        return f"{_WS} {chars}{{0,{cap - 1}}} {last}"
    return f"{_WS} {_visible(chars)} {chars}{{0,{cap}}}"


def _visible(chars: str) -> str:
    """`chars` without white space."""
    return chars[:-1] + r" \t\n]" if chars.startswith("[^") else chars


# A small teacher rarely closes a block on its own: it writes until the cap, and the grammar closes the block there,
# mid-word. A student trained on such traces cannot see when a block ends (after N characters, which it does not
# count). Blocks that close after a sentence end give it a cue it can see: at the cap, the grammar asks for the stop.
# The same holds for answers and reports: each claim ends "word [source]." rather than wherever the cap fell.
# ASCII marks only: offered "。！？" too, the small teacher ended English sentences with them.
_SENTENCE_END = "[.!?]"
_SENTENCE = f'{_SENTENCE_END} "\\n"?'  # a newline may follow, as `serialize` writes blocks


def _repeat(item: str, lo: int, hi: int) -> str:
    """`item` lo..hi times (GBNF refuses `{0,0}`)."""
    if hi <= 0:
        return ""
    return item if lo == hi == 1 else f"{item}{{{lo},{hi}}}"


def _caps(caps):
    from oresearcher.config import GuideConfig

    return caps or GuideConfig()


def _block(tag: str, rule: str) -> str:
    return f'"<{tag}>" {rule} "</{tag}>"'


def planner_guide(min_items: int, max_items: int, caps=None) -> Guide:
    """A numbered list of `min_items`..`max_items` one-line subtasks (the orchestrator writes <subtask_list>)."""
    caps = _caps(caps)
    items = [f'"{n}. " line "\\n"' for n in range(1, max_items + 1)]
    optional = ""
    for item in reversed(items[min_items:]):  # "3." only after "2.": each optional item nests in the one before
        optional = f"({item} {optional})?".replace(" )", ")")
    rules = {"root": " ".join(items[:min_items]) + (f" {optional}" if optional else ""),
             "line": f"[^<\\n \\t] {_LINE}{{1,{caps.subtask_line - 1}}} {_SENTENCE_END}"}
    return Guide("planner", _gbnf(rules), max_items * (caps.subtask_line + 5))


def step_guide(observed: list[str], *, may_call: bool = True, may_answer: bool = True, caps=None) -> Guide:
    """One step of a subtask agent: <think>, an optional <plan>, then exactly one action: a <web_search>, a
    <crawl_page> of a URL observed so far, or (`may_answer`, once something was observed) the <subtask_answer>,
    whose citations are observed URLs."""
    caps = _caps(caps)
    actions, rules = [], {}
    if may_call:
        actions.append("search")
        # "|" alone separates queries: a query's own spaces around it are its to keep (parse_tool_call strips them)
        more = _repeat('("|" query)', 0, caps.queries - 1)
        rules["search"] = f'"<{WEB_SEARCH}>query=" query {more} "&num=" num "</{WEB_SEARCH}>"'.replace("  ", " ")
        rules["query"] = rf"[ ]? {_QUERY[:-1]} \t] {_QUERY}{{1,{caps.query}}}"
        rules["num"] = _alt([str(n) for n in range(1, caps.max_num + 1)])
        if observed:
            actions.append("crawl")
            rules["crawl"] = f'"<{CRAWL_PAGE}>url=" url "</{CRAWL_PAGE}>"'
    if may_answer and observed:
        actions.append("answer")
        rules.update(_answer_rules(caps))
    if not actions:
        raise ValueError("a step needs a possible action: allow a tool call, or an answer once something is observed")
    if observed:
        rules["url"] = _alt(observed)
    head = {"root": f'{_block(THINK, "think")} ws (plan ws)? ({" | ".join(actions)})',
            "think": _text(caps.think, last=_SENTENCE), "plan": _block(PLAN, "plantext"),
            "plantext": _text(caps.plan, last=_SENTENCE),
            "ws": _WS}
    longest = max((len(u) for u in observed), default=0)
    action = max(caps.queries * (caps.query + 3) + 40, longest + 30,
                 _answer_chars(caps, longest) if "answer" in actions else 0)
    return Guide("step", _gbnf({**head, **rules}), caps.think + caps.plan + 60 + action)


def answer_guide(observed: list[str], caps=None) -> Guide:
    """The <subtask_answer> an agent must write at its step cap: sentences, the first citing an observed URL."""
    caps = _caps(caps)
    if not observed:
        raise ValueError("an answer cites what was observed: with nothing observed there is nothing to cite")
    rules = {"root": "answer", **_answer_rules(caps), "url": _alt(observed)}
    return Guide("answer", _gbnf(rules), _answer_chars(caps, max(len(u) for u in observed)))


def _answer_rules(caps) -> dict[str, str]:
    # each claim ends with its citation and a sentence end: "claim [URL]. claim [URL]."
    return {"answer": _block(SUBTASK_ANSWER, _repeat("claim", 1, caps.answer_sentences)),
            "claim": f'asent " [" url "]" {_SENTENCE}',
            "asent": _text(caps.answer_sentence, _CLAIM, last=_visible(_CLAIM))}


def _answer_chars(caps, longest_url: int) -> int:
    return 40 + (caps.answer_sentences + 1) * (caps.answer_sentence + longest_url + 8)


def report_guide(n_sources: int, caps=None) -> Guide:
    """The summarizer's report: sections, each a heading and claims, each claim one sentence that opens with its
    source, `According to [n], ...` (n one of the `n_sources` numbered sources); the orchestrator renumbers them
    and writes References.

    Why the citation opens the claim: students trained on claims that ended `... [n].` wrote fluent report sentences
    of their own and ended them with "." alone, so their reports cited nothing (issue 10's held-out runs: the
    commonest violation). "According to [n]," is a phrase English already has, and it comes first, before the
    student's own sentence takes over."""
    caps = _caps(caps)
    if n_sources < 1:
        raise ValueError("a report cites its sources: with none there is nothing to cite")
    more = _repeat('(" " claim)', 0, caps.report_sentences - 1)
    rules = {"root": _repeat("section", caps.min_sections, caps.max_sections),
             "section": f'"## " heading "\\n" claim {more} "\\n\\n"',
             "claim": f'"According to" cite ", " rsent {_SENTENCE_END}',
             "heading": f"[^<\\[\\]\\n# \\t] [^<\\[\\]\\n#]{{2,{caps.heading}}}",
             "rsent": _text(caps.report_sentence, _REPORT_CLAIM, last=_visible(_REPORT_CLAIM)),
             "cite": f'" [" {_alt([str(n) for n in range(1, n_sources + 1)])} "]"'}
    per_section = caps.heading + 30 + caps.report_sentences * (caps.report_sentence + 30)
    return Guide("report", _gbnf(rules), caps.max_sections * per_section)


def score_guide(lo: int = 0, hi: int = 10, caps=None) -> Guide:
    """A judge's verdict: a one-line reason, then `Score: n` with lo <= n <= hi (read back by `parse_score`)."""
    caps = _caps(caps)
    rules = {"root": f'"Reason: " {_LINE}{{1,{caps.reason}}} "\\nScore: " score',
             "score": _alt([str(n) for n in range(lo, hi + 1)])}
    return Guide("score", _gbnf(rules), caps.reason + 20)


_SCORE_RE = re.compile(r"^Score:\s*(\d+)\s*$", re.MULTILINE)


def parse_score(text: str) -> int | None:
    """The score a judge wrote in the `score_guide` form; None if there is none."""
    found = _SCORE_RE.findall(text)
    return int(found[-1]) if found else None


def criteria_scores_guide(n: int, hi: int = 10, pairwise: bool = True) -> Guide:
    """An evaluation judge's scores on `n` numbered criteria, one line each (read back by `parse_criteria_scores`):
    `k. target: a, reference: b` side by side (RACE), or `k. score: a` (the pointwise variant)."""
    line = '"{k}. target: " score ", reference: " score "\\n"' if pairwise else '"{k}. score: " score "\\n"'
    rules = {"root": " ".join(line.format(k=k) for k in range(1, n + 1)),
             "score": _alt([str(v) for v in range(0, hi + 1)])}
    return Guide("criteria_scores", _gbnf(rules), n * 34 + 8)


_CRITERION_SCORE_RE = re.compile(r"^\s*(\d+)\.\s*(?:target:\s*(\d+)\s*,\s*reference:\s*(\d+)|score:\s*(\d+))\s*$",
                                 re.MULTILINE | re.IGNORECASE)


def parse_criteria_scores(text: str, n: int, hi: int = 10) -> dict[int, tuple[int, int | None]]:
    """{criterion number: (target score, reference score or None)} for the lines of `criteria_scores_guide`'s form
    that parse and lie on the scale; a criterion the judge skipped is absent (counted, never guessed)."""
    out: dict[int, tuple[int, int | None]] = {}
    for m in _CRITERION_SCORE_RE.finditer(text):
        k = int(m.group(1))
        pair = (int(m.group(2)), int(m.group(3))) if m.group(2) else (int(m.group(4)), None)
        if 1 <= k <= n and k not in out and all(v is None or 0 <= v <= hi for v in pair):
            out[k] = pair
    return out


def weights_guide(dimensions: list[str]) -> Guide:
    """A judge's weight for each dimension, in percent, one line each: `comprehensiveness: 30`."""
    rules = {"root": " ".join(f'"{d}: " pct "\\n"' for d in dimensions),
             "pct": _alt([str(v) for v in range(0, 101)])}
    return Guide("weights", _gbnf(rules), sum(len(d) + 7 for d in dimensions))


def parse_weights(text: str, dimensions: list[str]) -> dict[str, float] | None:
    """The weights a judge wrote in `weights_guide`'s form, normalised to sum to 1; None unless every dimension
    has one and they sum to more than 0."""
    found = {}
    for d in dimensions:
        m = re.search(rf"^\s*{re.escape(d)}\s*:\s*(\d+(?:\.\d+)?)\s*%?\s*$", text, re.MULTILINE | re.IGNORECASE)
        if m:
            found[d] = float(m.group(1))
    total = sum(found.values())
    if len(found) < len(dimensions) or total <= 0:
        return None
    return {d: v / total for d, v in found.items()}


def label_guide(labels: list[str], caps=None) -> Guide:
    """A judge's verdict as one of `labels`: a one-line reason, then `Label: x` (read back by `parse_label`)."""
    caps = _caps(caps)
    rules = {"root": f'"Reason: " {_LINE}{{1,{caps.reason}}} "\\nLabel: " label', "label": _alt(labels)}
    return Guide("label", _gbnf(rules), caps.reason + 20 + max(len(x) for x in labels))


def parse_label(text: str, labels: list[str]) -> str | None:
    found = re.findall(r"^\s*Label:\s*([\w-]+)\s*$", text, re.MULTILINE | re.IGNORECASE)
    value = found[-1].lower() if found else None
    return value if value in labels else None


def statements_guide(urls: list[str], max_items: int, caps=None) -> Guide:
    """Statement–URL pairs a judge reads out of a report (FACT's fallback): `k. statement | URL`, each URL one the
    report itself contains."""
    caps = _caps(caps)
    items = [f'"{k}. " stmt " | " url "\\n"' for k in range(1, max_items + 1)]
    optional = ""
    for item in reversed(items[1:]):
        optional = f"({item} {optional})?".replace(" )", ")")
    rules = {"root": f"{items[0]} {optional}".strip(), "stmt": f"[^<|\\n \\t] [^<|\\n]{{1,{caps.report_sentence}}}",
             "url": _alt(urls)}
    return Guide("statements", _gbnf(rules), max_items * (caps.report_sentence + max(map(len, urls)) + 10))


def parse_statements(text: str, urls: list[str]) -> list[tuple[str, str]]:
    """(statement, URL) pairs of `statements_guide`'s form whose URL is one of `urls`."""
    out = []
    for m in re.finditer(r"^\s*\d+\.\s*(.+?)\s*\|\s*(\S+)\s*$", text, re.MULTILINE):
        if m.group(2) in urls and m.group(1).strip():
            out.append((m.group(1).strip(), m.group(2)))
    return out


# A sentence ends at ".", "!", "?" before white space, at "。！？" (Chinese needs no space), or at a line end.
_SENTENCE_BREAK_RE = re.compile(r"[.!?](?=\s)|[。！？]|\n")
_ACCORDING_TO_RE = re.compile(r"\b(?:according to|as reported by|per)\s*$", re.IGNORECASE)
# a URL may hold balanced parentheses (".../wiki/Plague_(disease)"); a sentence's own punctuation after it is not its
_URL_RE = re.compile(r"https?://(?:[^\s<>()\[\]\"'|]|\([^()\s]*\))+")
_URL_TRAILING = ".,;:!?。，；：！？"


def cited_statements(report: str) -> list[tuple[str, int]]:
    """(statement, reference number) for each in-text citation: the whole sentence that holds the citation (in
    English or Chinese), without its citation marks, so "According to [2], X." gives ("X.", 2)."""
    body, _ = split_report(report)
    out = []
    for m in _CITE_GROUP_RE.finditer(body):
        starts = [b.end() for b in _SENTENCE_BREAK_RE.finditer(body, 0, m.start())]
        start = starts[-1] if starts else 0
        end_match = _SENTENCE_BREAK_RE.search(body, m.end())
        end = end_match.end() if end_match else len(body)
        before = _ACCORDING_TO_RE.sub("", body[start:m.start()])
        after = body[m.end():end].lstrip(" ,，")
        joined = before.rstrip() + ("" if after[:1] in tuple(".!?。！？,，;；") else " ") + after
        sentence = re.sub(r"[ \t]*" + _CITE_GROUP_RE.pattern, "", joined)
        sentence = re.sub(r"\s+", " ", sentence).strip().lstrip("#").strip()
        if sentence and sentence[0].islower():
            sentence = sentence[0].upper() + sentence[1:]
        for number in _expand_citation_group(m.group(1)):
            if sentence:
                out.append((sentence, number))
    return out


def urls_in(text: str) -> list[str]:
    """The http(s) URLs written in `text`, in order, each once."""
    return list(dict.fromkeys(u.rstrip(_URL_TRAILING) for u in _URL_RE.findall(text)))


# ---------------------------------------------------------------------------------------------------------------
# Validation


class Rule(StrEnum):
    EMPTY_TRACE = "empty_trace"
    TEXT_OUTSIDE_TAGS = "text_outside_tags"
    UNCLOSED_TAG = "unclosed_tag"
    UNOPENED_TAG = "unopened_tag"
    STRAY_CLOSING_TAG = "stray_closing_tag"
    EMPTY_BLOCK = "empty_block"
    SUBTASK_LIST_NOT_FIRST = "subtask_list_not_first"
    DUPLICATE_SUBTASK_LIST = "duplicate_subtask_list"
    SUBTASK_COUNT_MISMATCH = "subtask_count_mismatch"
    NO_SUBTASK = "no_subtask"
    OUTSIDE_SUBTASK = "outside_subtask"
    STEP_ORDER = "step_order"
    TOOL_WITHOUT_OBSERVATION = "tool_without_observation"
    BAD_TOOL_ARGS = "bad_tool_args"
    MISSING_SUBTASK_ANSWER = "missing_subtask_answer"
    MISSING_SUGGESTED_ANSWER = "missing_suggested_answer"
    MULTIPLE_SUGGESTED_ANSWERS = "multiple_suggested_answers"
    CONTENT_AFTER_SUGGESTED_ANSWER = "content_after_suggested_answer"
    MISSING_REFERENCES = "missing_references"
    MALFORMED_REFERENCE = "malformed_reference"
    NO_CITATION = "no_citation"
    CITATION_WITHOUT_REFERENCE = "citation_without_reference"
    FABRICATED_REFERENCE = "fabricated_reference"


@dataclass(frozen=True)
class Violation:
    rule: Rule
    message: str
    position: int  # character offset in the trace text
    line: int = 0  # 1-based line of `position`

    def __str__(self) -> str:
        return f"line {self.line}: {self.rule}: {self.message}"


# Allowed successors inside a subtask: think → plan → tool → observation → (think | subtask_answer).
# [ours] <plan> is optional after <think>; <think> may follow <plan> (think → plan → think → tool: the released
# model writes it), and repeats after an observation.
_NEXT = {
    SUBTASK: {THINK},
    THINK: {PLAN, *TOOL_TAGS, SUBTASK_ANSWER},
    PLAN: {THINK, *TOOL_TAGS, SUBTASK_ANSWER},
    WEB_SEARCH: {OBSERVATION},
    CRAWL_PAGE: {OBSERVATION},
    OBSERVATION: {THINK, SUBTASK_ANSWER},
}
_MUST_HAVE_CONTENT = (SUBTASK_LIST, SUBTASK, THINK, PLAN, SUBTASK_ANSWER, SUGGESTED_ANSWER, *TOOL_TAGS)


def validate(text: str, *, check_report: bool = True) -> list[Violation]:
    """Every way `text` departs from the strict grammar, in order of position. Empty list = valid."""
    trace = parse(text)
    found: list[tuple[Rule, str, int]] = []
    add = found.append
    segs = trace.segments
    if not segs:
        add((Rule.EMPTY_TRACE, "the trace has no content", 0))
        return _located(text, found)

    for issue in trace.issues:
        add((Rule.STRAY_CLOSING_TAG, f"</{issue.tag}> closes nothing", issue.position))
    for seg in segs:
        if seg.tag == TEXT:
            add((Rule.TEXT_OUTSIDE_TAGS, f"free text outside tags: {seg.content[:40]!r}", seg.start))
            continue
        if not seg.closed:
            add((Rule.UNCLOSED_TAG, f"<{seg.tag}> is never closed", seg.start))
        if not seg.opened:
            add((Rule.UNOPENED_TAG, f"</{seg.tag}> has no opening <{seg.tag}>", seg.start))
        if seg.tag in _MUST_HAVE_CONTENT and not seg.content:
            add((Rule.EMPTY_BLOCK, f"<{seg.tag}> is empty", seg.start))
        if seg.tag in TOOL_TAGS and (err := parse_tool_call(seg.tag, seg.content).error):
            add((Rule.BAD_TOOL_ARGS, err, seg.start))

    tagged = [s for s in segs if s.tag != TEXT]
    if not tagged:
        add((Rule.SUBTASK_LIST_NOT_FIRST, "no tagged blocks at all: the trace must open with <subtask_list>", 0))
        return _located(text, found)
    _check_outline(trace, tagged, add)
    _check_subtasks(tagged, add)
    if check_report and trace.report is not None:
        report_seg = next(s for s in reversed(tagged) if s.tag == SUGGESTED_ANSWER)
        _check_report(trace.report, report_seg, text, add, observed_urls(trace))
    return _located(text, found)


def _check_outline(trace: ParsedTrace, tagged: list[Segment], add) -> None:
    lists = [s for s in tagged if s.tag == SUBTASK_LIST]
    if not lists or tagged[0].tag != SUBTASK_LIST:
        where = lists[0].start if lists else 0
        add((Rule.SUBTASK_LIST_NOT_FIRST, "the trace must open with <subtask_list>", where))
    for extra in lists[1:]:
        add((Rule.DUPLICATE_SUBTASK_LIST, "a second <subtask_list>", extra.start))
    n_sub = sum(s.tag == SUBTASK for s in tagged)
    if n_sub == 0:
        add((Rule.NO_SUBTASK, "the trace has no <subtask>", 0))
    elif trace.subtask_list and n_sub != len(trace.subtask_list):
        add((Rule.SUBTASK_COUNT_MISMATCH,
             f"<subtask_list> has {len(trace.subtask_list)} items but the trace has {n_sub} <subtask> blocks",
             lists[0].start))
    answers = [s for s in tagged if s.tag == SUGGESTED_ANSWER]
    if not answers:
        add((Rule.MISSING_SUGGESTED_ANSWER, "no <suggested_answer> (final report)", tagged[-1].end))
    for extra in answers[1:]:
        add((Rule.MULTIPLE_SUGGESTED_ANSWERS, "a second <suggested_answer>", extra.start))
    if answers and tagged[-1] is not answers[-1]:
        after = tagged[tagged.index(answers[-1]) + 1]
        add((Rule.CONTENT_AFTER_SUGGESTED_ANSWER, f"<{after.tag}> after the final report", after.start))


def _check_subtasks(tagged: list[Segment], add) -> None:
    prev: str | None = None  # tag of the previous block inside the current subtask; None outside subtasks
    prev_seg: Segment | None = None

    def end_subtask(at: int) -> None:
        if prev in TOOL_TAGS:
            add((Rule.TOOL_WITHOUT_OBSERVATION, f"<{prev}> has no <observation>", prev_seg.start))
        if prev is not None and prev != SUBTASK_ANSWER:
            add((Rule.MISSING_SUBTASK_ANSWER, "subtask ends without <subtask_answer>", at))

    for seg in tagged:
        if seg.tag == SUBTASK:
            end_subtask(seg.start)
            prev, prev_seg = SUBTASK, seg
        elif seg.tag in (SUBTASK_LIST, SUGGESTED_ANSWER):
            end_subtask(seg.start)
            prev = None
        elif prev is None:
            add((Rule.OUTSIDE_SUBTASK, f"<{seg.tag}> outside any <subtask>", seg.start))
        elif prev == SUBTASK_ANSWER:
            add((Rule.STEP_ORDER, f"<{seg.tag}> after <subtask_answer>; a new <subtask> must come first", seg.start))
        elif seg.tag not in _NEXT[prev]:
            if prev in TOOL_TAGS:
                add((Rule.TOOL_WITHOUT_OBSERVATION, f"<{prev}> is followed by <{seg.tag}>, not <observation>",
                     prev_seg.start))
            else:
                expected = " or ".join(f"<{t}>" for t in sorted(_NEXT[prev]))
                add((Rule.STEP_ORDER, f"<{seg.tag}> after <{prev}>; expected {expected}", seg.start))
            prev, prev_seg = seg.tag, seg
        else:
            prev, prev_seg = seg.tag, seg
    end_subtask(tagged[-1].end)


def _check_report(report: str, seg: Segment, text: str, add, observed: set[str]) -> None:
    # Offsets inside the report map to the trace approximately: the report starts after its opening tag.
    base = text.find(report[:50], seg.start) if report else seg.start
    base = seg.start if base < 0 else base
    refs = references(report)
    if split_report(report)[1] is None:
        add((Rule.MISSING_REFERENCES, "the report has no References list", seg.start))
    for offset, line in malformed_reference_lines(report):
        add((Rule.MALFORMED_REFERENCE, f"not `[n]. URL - Title`: {line[:60]!r}", base + offset))
    for ref in refs:
        if ref.url.rstrip(".,;") not in observed:
            add((Rule.FABRICATED_REFERENCE, f"[{ref.number}] {ref.url[:80]} was never observed", base + ref.position))
    cites = citations(report)
    if not cites:
        add((Rule.NO_CITATION, "the report cites nothing in the text", seg.start))
    numbers = {r.number for r in refs}
    for c in cites:
        if c.number not in numbers:
            add((Rule.CITATION_WITHOUT_REFERENCE, f"[{c.number}] has no entry in References", base + c.position))


def _located(text: str, found: list[tuple[Rule, str, int]]) -> list[Violation]:
    out = [Violation(rule, msg, pos, text.count("\n", 0, pos) + 1) for rule, msg, pos in found]
    return sorted(out, key=lambda v: v.position)


def is_valid(text: str) -> bool:
    return not validate(text)

"""The multi-agent research workflow (method.md §1-2): planner → parallel subtask agents → summarizer → one trace.

    result = await research(client, env, query, SynthesisConfig(), seed=0)
    result.trace      # one trace in the grammar: <subtask_list>, per subtask the agent's steps, <suggested_answer>

The same runtime serves synthesis (a teacher model), GRPO rollouts and evaluation (the policy): only the
client behind it changes. Who writes what:
- the planner's numbered list becomes <subtask_list>; the orchestrator writes each <subtask> header;
- each subtask agent writes its own <think>/<plan>/tool calls/<subtask_answer>; the environment writes
  <observation> (escaped), so a page can never change the trace's structure;
- the summarizer writes the report; the orchestrator renumbers its citations across subtasks and builds the
  References list from URLs actually observed, dropping citations of anything never seen.
Prompts live in `oresearcher/prompts/*.md`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from models.llm import LLMClient, LLMError, Usage
from oresearcher import grammar as g
from oresearcher.config import SynthesisConfig
from oresearcher.research.environment import ResearchEnvironment
from oresearcher.tracing import span

PROMPTS = Path(__file__).parent / "prompts"
_TOOL_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tool")
SUBTASK_STOPS = ("</web_search>", "</crawl_page>", "</subtask_answer>")
MAX_SOURCES_FOR_SUMMARY = 30


def prompt(name: str, **fields) -> str:
    return (PROMPTS / f"{name}.md").read_text().format(**fields).strip()


AGENT_PROMPTS = ("planner.md", "subtask_agent.md", "summarizer.md")


def prompts_fingerprint() -> str:
    """What trace ids depend on: the agents' prompts only (a judge's prompt changes no trace)."""
    h = hashlib.sha256()
    for name in AGENT_PROMPTS:
        h.update(name.encode() + (PROMPTS / name).read_bytes())
    return h.hexdigest()[:12]


@dataclass
class SubtaskRun:
    title: str
    text: str = ""  # the subtask's part of the trace: the agent's steps and the observations
    answer: str | None = None
    sources: list[tuple[str, str]] = field(default_factory=list)  # (url, title) observed, in order
    steps: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    repeated_outputs: int = 0
    stop_reason: str = ""
    seconds: float = 0.0


@dataclass
class ResearchResult:
    query: str
    trace: str = ""
    subtasks: list[SubtaskRun] = field(default_factory=list)
    report: str = ""
    dropped_citations: int = 0
    usage: Usage = field(default_factory=Usage)
    timings: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    retryable: bool = False  # the failure was transient (an unreachable or overloaded server): retry on re-run


# ------------------------------------------------------------------------------------------------------ planner
async def plan_subtasks(client: LLMClient, query: str, cfg: SynthesisConfig, seed: int, usage: Usage) -> list[str]:
    system = prompt("planner", max_subtasks=cfg.max_subtasks)
    guide = g.planner_guide(min(cfg.min_subtasks, cfg.max_subtasks), cfg.max_subtasks, cfg.guide)
    for attempt in range(2):
        resp = await client.chat([{"role": "system", "content": system}, {"role": "user", "content": query}],
                                 seed=seed * 100 + attempt, tag="planner", usage=usage, guide=guide)
        text = resp.text
        if m := re.search(r"<subtask_list>(.*?)(</subtask_list>|$)", text, re.S):
            text = m.group(1)
        items = []
        for item in g.split_list_items(g.escape(text)):
            # a subtask is one line: keep its first sentence (small models write paragraphs)
            item = re.split(r"(?<=[.?!])\s", " ".join(item.split()), maxsplit=1)[0][:160]
            if len(item) >= 3 and item.lower() not in (i.lower() for i in items):
                items.append(item)
        if items:
            return items[: cfg.max_subtasks]
    raise LLMError("planner produced no subtasks")


# ---------------------------------------------------------------------------------------------- subtask agent
async def run_subtask(client: LLMClient, env: ResearchEnvironment, query: str, title: str, cfg: SynthesisConfig,
                      seed: int, usage: Usage) -> SubtaskRun:
    """One agent's think → plan → tool → observation loop, under the loop guards of the released inference code."""
    run, start = SubtaskRun(title), time.perf_counter()
    messages = [{"role": "system", "content": prompt("subtask_agent")},
                {"role": "user", "content": f"Research question: {query}\nYour subtask: {title}"}]
    parts: list[str] = []
    kinds: list[str] = []
    seen_outputs: set[str] = set()
    with span(f"subtask:{title[:60]}", "AGENT", {"query": query, "subtask": title}) as sp:
        while run.steps < cfg.max_steps and not run.stop_reason:
            run.steps += 1
            # Guided: the step's grammar starts at <think> and offers only what is possible now (an answer once a
            # tool was used, a crawl of what was observed). Unguided: a prefill may start the block for the model.
            guide = _step_guide(run, cfg) if client.guided else None
            prefix = "<think>\n" if cfg.prefill_think and guide is None else ""
            step_messages = messages + [{"role": "assistant", "content": prefix}] if prefix else messages
            resp = await client.chat(step_messages, stop=SUBTASK_STOPS, seed=seed * 1000 + run.steps, tag="subtask",
                                     usage=usage, guide=guide)
            choice = resp.choices[0]
            out = g.complete_stop(prefix + choice.text.strip(), choice.stop_sequence, SUBTASK_STOPS)
            if out.strip() in seen_outputs and len(out) > 20:
                run.repeated_outputs += 1  # the released loop marks verbatim repeats; filters read this count
            seen_outputs.add(out.strip())
            parts.append(out)
            messages.append({"role": "assistant", "content": out})
            call = g.last_tool_call(out)
            answer = next((s.content for s in g.parse_segments(out)[0] if s.tag == g.SUBTASK_ANSWER), None)
            if call is not None and run.tool_calls < cfg.max_tool_calls:
                kinds.append(call.name)
                observation = await observe(env, call)
                run.tool_calls += 1
                run.tool_errors += observation.startswith("Error:")
                run.sources += g.sources_in_observation(observation)
                block = g.observation_text(observation)
                parts.append(block)
                messages.append({"role": "user", "content": block})
                if run.tool_errors >= cfg.max_tool_errors:
                    run.stop_reason = "tool_errors"
            elif answer is not None:
                run.answer, run.stop_reason = answer, "answered"
            else:
                kinds.append("text")
                if call is not None:  # over the cap: unanswered, the call stays out of the trace (a tool call
                    parts.pop()       # without its observation would make the whole trace invalid)
                hint = ("You have used all your tool calls. " if call is not None else "") + \
                    "Continue: call one tool, or write your <subtask_answer>."
                messages.append({"role": "user", "content": hint})
            if len(kinds) >= cfg.same_kind_window and len(set(kinds[-cfg.same_kind_window:])) == 1:
                run.stop_reason = "same_kind_loop"
        if run.answer is None:
            await _force_answer(client, messages, parts, run, seed, usage, cfg)
        run.text = "\n".join(parts)
        run.seconds = time.perf_counter() - start
        sp.set_outputs({"answer": run.answer, "tool_calls": run.tool_calls, "stop_reason": run.stop_reason})
    return run


def observed(run: SubtaskRun) -> list[str]:
    """The URLs this agent has seen, each once, in order: the only ones it may crawl or cite."""
    return list(dict.fromkeys(url for url, _title in run.sources))


def _step_guide(run: SubtaskRun, cfg: SynthesisConfig) -> g.Guide | None:
    try:
        return g.step_guide(observed(run), may_call=run.tool_calls < cfg.max_tool_calls,
                            may_answer=run.tool_calls > 0, caps=cfg.guide)
    except ValueError:  # no tool call left and nothing observed: no valid step exists; run it unguided
        return None


async def observe(env: ResearchEnvironment, call: g.ToolCall) -> str:
    """Run one tool call in the environment (a TOOL span); shared by the subtask agents and the policy runtime."""
    with span(f"tool:{call.name}", "TOOL", {"args": call.args, "num": call.num}) as sp:
        # Tools are sync (TRL-style functions); they run on their own pool so that the many agents of a
        # synthesis run do not queue behind asyncio's small default executor.
        observation = await asyncio.get_running_loop().run_in_executor(_TOOL_POOL, env.execute, call)
        sp.set_outputs({"observation": observation[:2000]})
    return observation


async def _force_answer(client: LLMClient, messages: list, parts: list[str], run: SubtaskRun, seed: int,
                        usage: Usage, cfg: SynthesisConfig) -> None:
    """Out of steps (or stopped by a guard): ask for the subtask answer now, starting the block for the model."""
    run.stop_reason = run.stop_reason or "step_cap"
    ask = messages + [{"role": "user", "content": "Stop researching. Write your <subtask_answer> now, citing the "
                                                  "addresses of the pages you used."}]
    urls = observed(run)
    guide = g.answer_guide(urls, cfg.guide) if client.guided and urls else None
    if guide is None:  # unguided: start the block for the model
        ask.append({"role": "assistant", "content": "<subtask_answer>\n"})
    resp = await client.chat(ask, stop=("</subtask_answer>",), seed=seed * 1000 + 999, tag="subtask_answer",
                             usage=usage, guide=guide)
    answer = resp.text
    if guide is not None:  # the grammar wrote the whole block
        answer = next((s.content for s in g.parse_segments(answer)[0] if s.tag == g.SUBTASK_ANSWER), answer)
    answer = answer.replace("<subtask_answer>", "").replace("</subtask_answer>", "").strip()
    parts.append(g.block(g.SUBTASK_ANSWER, answer))
    run.answer = answer


# --------------------------------------------------------------------------------------------------- summarizer
def number_sources(runs: list[SubtaskRun]) -> list[tuple[str, str]]:
    """The sources offered to the summarizer: cited by a subtask answer first, then the rest, each URL once."""
    titles: dict[str, str] = {}
    for run in runs:
        for url, title in run.sources:
            titles.setdefault(url, title)
    cited = [u for run in runs for u in re.findall(r"https?://[^\s\])]+", run.answer or "") if u in titles]
    order = list(dict.fromkeys(cited + list(titles)))
    return [(u, titles[u]) for u in order[:MAX_SOURCES_FOR_SUMMARY]]


async def summarize(client: LLMClient, query: str, runs: list[SubtaskRun], sources: list[tuple[str, str]],
                    seed: int, usage: Usage, cfg: SynthesisConfig) -> str:
    number = {url: n for n, (url, _t) in enumerate(sources, 1)}

    def with_numbers(answer: str) -> str:
        return re.sub(r"\[(https?://[^\s\]]+)\]", lambda m: f"[{number[m.group(1)]}]" if m.group(1) in number
                      else "", answer)

    findings = "\n\n".join(f"## {r.title}\n{with_numbers(r.answer or '(no answer)')}" for r in runs)
    listing = "\n".join(f"[{n}] {title or url} ({url})" for n, (url, title) in enumerate(sources, 1))
    user = f"Research question: {query}\n\n# Findings\n{findings}\n\n# Sources\n{listing or '(none)'}"
    guide = g.report_guide(len(sources), cfg.guide) if sources else None  # cite only numbers that exist
    resp = await client.chat([{"role": "system", "content": prompt("summarizer")}, {"role": "user", "content": user}],
                             stop=("</suggested_answer>",), seed=seed * 1000 + 500, tag="summarizer", usage=usage,
                             guide=guide)
    return resp.text.replace("<suggested_answer>", "").strip()


def finalize_report(draft: str, sources: list[tuple[str, str]]) -> tuple[str, int]:
    """Renumber citations 1..k in order of first use, keep only observed sources, append the References list."""
    draft = g.escape(draft)
    body, their_refs = g.split_report(draft)  # a reference list the model wrote is replaced by ours...
    if their_refs is not None and not g.references(draft):
        body = draft  # ...but a section it merely titled "Reference list", with no entries, is part of its text
    renumber: dict[int, int] = {}
    dropped = 0

    def cite(numbers: list[int]) -> str:
        nonlocal dropped
        kept = []
        for n in numbers:
            if 1 <= n <= len(sources):
                kept.append(renumber.setdefault(n, len(renumber) + 1))
            else:
                dropped += 1
        return "".join(f"[{k}]" for k in dict.fromkeys(kept))

    body = g.rewrite_citations(body, cite).rstrip()
    refs = sorted(renumber.items(), key=lambda kv: kv[1])
    lines = [f"[{new}]. {sources[old - 1][0]} - {sources[old - 1][1] or sources[old - 1][0]}" for old, new in refs]
    return (f"{body}\n\n## References\n" + "\n".join(lines) if lines else body), dropped


# ------------------------------------------------------------------------------------------------ the workflow
async def research(client: LLMClient, env: ResearchEnvironment, query: str, cfg: SynthesisConfig,
                   seed: int = 0) -> ResearchResult:
    """Planner → subtask agents (concurrently unless `parallel_subtasks` is off) → summarizer → one trace.

    LLM failures (after the client's retries) end this candidate with `failure` set; `BudgetExceeded` and
    `TapeMiss` propagate, so the caller can stop cleanly and resume later.
    """
    result, t0 = ResearchResult(query), time.perf_counter()
    try:
        with span("research", "CHAIN", {"query": query, "seed": seed}) as sp:
            titles = await plan_subtasks(client, query, cfg, seed, result.usage)
            t1 = time.perf_counter()
            jobs = [run_subtask(client, env, query, title, cfg, seed * 10 + i, result.usage)
                    for i, title in enumerate(titles)]
            if cfg.parallel_subtasks:
                result.subtasks = list(await asyncio.gather(*jobs))
            else:
                result.subtasks = [await job for job in jobs]
            t2 = time.perf_counter()
            sources = number_sources(result.subtasks)
            draft = await summarize(client, query, result.subtasks, sources, seed, result.usage, cfg)
            result.report, result.dropped_citations = finalize_report(draft, sources)
            result.timings = {"planner_s": t1 - t0, "subtasks_s": t2 - t1, "summarizer_s": time.perf_counter() - t2}
            result.trace = assemble_trace(titles, result.subtasks, result.report)
            sp.set_outputs({"report": result.report[:2000]})
    except LLMError as e:
        result.failure, result.retryable = f"llm: {e.reason}", e.transient
    result.timings["total_s"] = time.perf_counter() - t0
    return result


def assemble_trace(titles: list[str], runs: list[SubtaskRun], report: str) -> str:
    parts = [g.block(g.SUBTASK_LIST, "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1)))]
    for run in runs:
        parts += [g.block(g.SUBTASK, run.title), run.text]
    parts.append(f"<{g.SUGGESTED_ANSWER}>\n{report}\n</{g.SUGGESTED_ANSWER}>")  # already escaped
    return "\n".join(parts)


def summary_of(result: ResearchResult) -> dict:
    """The parsed structure a trace record carries."""
    parsed = g.parse(result.trace) if result.trace else None
    return {
        "subtasks": [{"title": r.title, "steps": r.steps, "tool_calls": r.tool_calls, "tool_errors": r.tool_errors,
                      "repeated_outputs": r.repeated_outputs, "answered": r.stop_reason == "answered",
                      "stop_reason": r.stop_reason, "seconds": round(r.seconds, 3)} for r in result.subtasks],
        "tool_calls": dict(Counter(c.name for c in parsed.tool_calls)) if parsed else {},
        "report_chars": len(result.report),
        "citations": len(g.citations(result.report)) if result.report else 0,
        "references": len(g.references(result.report)) if result.report else 0,
        "dropped_citations": result.dropped_citations,
    }

"""Evaluation the way the field measures deep research (method.md §5): RACE, FACT, key-point recall, and the
statistics around them. The formulas are plain functions (unit-tested against hand-computed values); the scorers
ask the project's one judge (`judge.Judge`'s client: cached, costed, its identity recorded with every score).

    tasks = query_set("drb", limit=4)                        # two English, two Chinese tasks
    rubric = await rubric_for(task, judge_client, cfg.evaluate)     # official DRB weights and criteria, or generated
    race = await race_scores(judge_client, cfg.evaluate, rubric, target_report, reference_report)
    race_task_score(rubric, race)                            # S(target) / (S(target) + S(reference))
    pairs = fact_pairs(report)                               # (statement, URL), de-duplicated per URL
    citation_accuracy(labels), effective_citations(labels_per_report)
    bootstrap_ci(per_task_scores)                            # the interval of a headline score
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from models.llm import LLMClient, LLMError
from oresearcher import grammar as g
from oresearcher.agents import prompt

DIMENSIONS = ["comprehensiveness", "insight", "instruction_following", "readability"]
# Criteria for a dimension when the judge writes none that parse (the last of RACE's weight look-up fallbacks).
DEFAULT_CRITERIA = {
    "comprehensiveness": ["Covers the main aspects the task asks about", "Gives concrete facts, figures or examples"],
    "insight": ["Explains causes, consequences or trade-offs rather than listing facts",
                "Draws conclusions the sources support"],
    "instruction_following": ["Answers the task that was asked", "Keeps to the scope and form the task requests"],
    "readability": ["Clear structure with headings", "Plain, precise language"],
}
FACT_LABELS = ["supported", "unsupported", "unknown"]
KEYPOINT_LABELS = ["supported", "contradicted", "absent"]


class QuerySetError(ValueError):
    """A query set that does not exist or cannot be read (a user error: one line)."""


# -- query sets ------------------------------------------------------------------------------------------------


@dataclass
class EvalTask:
    id: str
    query: str
    language: str = "en"
    key_points: list[str] = field(default_factory=list)


def query_set(spec: str, limit: int | None = None, heldout: Path | None = None) -> list[EvalTask]:
    """`drb` (DeepResearch Bench; a limit takes English and Chinese tasks in turn), `drb-en`, `drb-zh`, `drg`
    (DeepResearchGym, with key points), `heldout` (the held-out split of the default seeds), or a seed file."""
    from oresearcher import evalsets

    if spec in ("drb", "drb-en", "drb-zh"):
        rows = list(evalsets.read_jsonl("drb/query.jsonl"))
        by_lang = {lang: [r for r in rows if r["language"] == lang] for lang in ("en", "zh")}
        if spec != "drb":
            picked = by_lang[spec.removeprefix("drb-")]
        else:  # alternate languages so that any limit holds both: en, zh, en, zh, ...
            picked = [r for pair in zip(by_lang["en"], by_lang["zh"], strict=False) for r in pair]
        tasks = [EvalTask(f"drb-{r['id']}", r["prompt"], r["language"]) for r in picked]
    elif spec == "drg":
        points = {str(r["id"]): [p["point_content"] for p in r.get("key_points", [])]
                  for r in evalsets.read_jsonl("drg/key_points.jsonl")}
        tasks = [EvalTask(f"drg-{r['id']}", r["query"], "en", points.get(str(r["id"]), []))
                 for r in evalsets.read_jsonl("drg/queries.jsonl")]
    else:
        from oresearcher.seeds import IngestError, Rejection, normalize, read_records

        path = heldout if spec == "heldout" else Path(spec).expanduser()
        if path is None or not Path(path).is_file():
            raise QuerySetError(f"query set {spec!r}: not drb, drb-en, drb-zh, drg, heldout, or an existing seed file")
        rejections: list[Rejection] = []
        try:
            records = read_records(Path(path), rejections)
        except IngestError as e:
            raise QuerySetError(f"query set {spec!r}: {e}") from None
        if rejections:
            r = rejections[0]
            raise QuerySetError(f"query set {spec!r}: {r.source}:{r.line}: {r.reason} ({r.detail})")
        queries = [q for q in (normalize(q) for _, q, _ in records) if q]
        tasks = [EvalTask(f"{Path(path).stem}-{i}", q, language_of(q)) for i, q in enumerate(queries)]
    if not tasks:
        raise QuerySetError(f"query set {spec!r} holds no queries")
    return tasks[:limit] if limit else tasks


def language_of(text: str) -> str:
    """'zh' when most letters are CJK ideographs, else 'en' (the two languages the benchmarks use)."""
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    return "zh" if letters and cjk / letters > 0.3 else "en"


# -- RACE ------------------------------------------------------------------------------------------------------


@dataclass
class Rubric:
    """A task's RACE dimension weights W_d and criteria {criterion: weight} per dimension, and where they came from
    ("official", "generated", or "default" for a fallback)."""

    weights: dict[str, float]
    criteria: dict[str, list[tuple[str, float]]]
    source: dict[str, str] = field(default_factory=dict)


def official_rubrics() -> dict[str, Rubric]:
    """DeepResearch Bench's own weights and criteria, keyed by the task's prompt text."""
    from oresearcher import evalsets

    out = {}
    for r in evalsets.read_jsonl("drb/criteria.jsonl"):
        crit = {d: [(c["criterion"] + (f": {c['explanation']}" if c.get("explanation") else ""), float(c["weight"]))
                    for c in r["criterions"].get(d, [])] for d in DIMENSIONS}
        out[r["prompt"].strip()] = Rubric(normalise(r["dimension_weight"]), crit, {"weights": "official",
                                                                                   "criteria": "official"})
    return out


def normalise(weights: dict[str, float]) -> dict[str, float]:
    """Weights over DIMENSIONS summing to 1 (missing ones 0); equal weights when they sum to 0."""
    w = {d: max(float(weights.get(d, 0.0)), 0.0) for d in DIMENSIONS}
    total = sum(w.values())
    return {d: (v / total if total > 0 else 1 / len(DIMENSIONS)) for d, v in w.items()}


def average_weights(samples: Sequence[dict[str, float] | None]) -> tuple[dict[str, float], str]:
    """The mean of the judge's weight samples that parsed, renormalised; equal weights if none did."""
    parsed = [s for s in samples if s]
    if not parsed:
        return normalise({}), "default"
    return normalise({d: sum(s[d] for s in parsed) / len(parsed) for d in DIMENSIONS}), "generated"


def dimension_score(criteria: Sequence[tuple[str, float]], scores: dict[int, float]) -> float | None:
    """S_d = Σ w_c·s_c / Σ w_c over the criteria (numbered from 1) the judge scored; None if it scored none."""
    pairs = [(w, scores[k]) for k, (_, w) in enumerate(criteria, 1) if k in scores]
    total = sum(w for w, _ in pairs)
    if not pairs or total <= 0:
        return None
    return sum(w * s for w, s in pairs) / total


def overall_score(weights: dict[str, float], dim_scores: dict[str, float | None]) -> float:
    """S = Σ_d W_d·S_d, over the dimensions that were scored, their weights renormalised."""
    known = {d: s for d, s in dim_scores.items() if s is not None}
    total = sum(weights[d] for d in known)
    return sum(weights[d] * s for d, s in known.items()) / total if total > 0 else 0.0


def relative_score(target: float, reference: float) -> float:
    """RACE's task score S(target) / (S(target) + S(reference)); 0.5 (parity) when both are 0."""
    return target / (target + reference) if target + reference > 0 else 0.5


@dataclass
class RaceResult:
    """One task's RACE: per-dimension S_d for target and reference, the overall S of each, and the task score
    (relative, or S(target)/scale pointwise); `unscored` counts criteria the judge left without a readable score."""

    target: dict[str, float | None]
    reference: dict[str, float | None]
    overall_target: float
    overall_reference: float | None
    score: float
    unscored: int = 0
    calls: int = 0


async def rubric_for(task: EvalTask, client: LLMClient, ecfg, official: dict[str, Rubric] | None = None,
                     seed: int = 0) -> Rubric:
    """The task's official rubric if DeepResearch Bench has one; else weights the judge samples `weight_samples`
    times (averaged, renormalised; equal weights if none parse) and `n_criteria` criteria per dimension it writes
    (equal weights; the default criteria if none parse)."""
    found = (official if official is not None else official_rubrics()).get(task.query.strip())
    if found:
        return found
    samples = []
    # sampled `weight_samples` times, averaged (DeepResearch Bench's way); a judge at temperature 0 answers each
    # sample alike, so it is asked once
    for i in range(ecfg.weight_samples if client is None or client.defaults["temperature"] > 0 else 1):
        text = await _ask(client, prompt("race_weights", query=task.query), g.weights_guide(DIMENSIONS),
                          seed * 1000 + i, "race_weights")
        samples.append(g.parse_weights(text, DIMENSIONS) if text is not None else None)
    weights, w_source = average_weights(samples)
    criteria, c_source = {}, {}
    for d in DIMENSIONS:
        text = await _ask(client, prompt("race_criteria", query=task.query, n=ecfg.n_criteria,
                                         dimension=d.replace("_", " ")),
                          g.planner_guide(ecfg.n_criteria, ecfg.n_criteria), seed, "race_criteria")
        items = g.split_list_items(text or "")[: ecfg.n_criteria]
        c_source[d] = "generated" if items else "default"
        criteria[d] = [(c, 1.0) for c in (items or DEFAULT_CRITERIA[d])]
    sources = {"weights": w_source, "criteria": "generated" if set(c_source.values()) == {"generated"} else
               ("default" if set(c_source.values()) == {"default"} else "mixed")}
    return Rubric(weights, criteria, sources)


async def race_scores(client: LLMClient, ecfg, task: EvalTask, rubric: Rubric, target: str,
                      reference: str | None, seed: int = 0) -> RaceResult:
    """Score the citation-stripped target (and, side by side, the reference) on each dimension's criteria, one
    judge call per dimension; the judge never sees the weights. No reference: the pointwise variant.

    An empty report scores 0 without a judge call (there is nothing to grade); when one side is empty the other
    is graded alone; two identical reports are at parity (0.5) by definition."""
    texts = {"target": g.strip_citations(target or "")}
    if reference is not None:
        texts["reference"] = g.strip_citations(reference)
    pairwise = "reference" in texts
    if pairwise and texts["target"].strip() == texts["reference"].strip():
        return RaceResult({}, {}, 0.0, 0.0, 0.5)
    scored: dict[str, dict[str, float | None]] = {side: {} for side in texts}
    unscored = calls = 0
    both = pairwise and all(t.strip() for t in texts.values())
    for d in DIMENSIONS:
        crit = rubric.criteria[d]
        listing = "\n".join(f"{k}. {c}" for k, (c, _) in enumerate(crit, 1))
        asks = [("race_pairwise", "target", texts["reference"])] if both else \
            [("race_pointwise", side, None) for side, t in texts.items() if t.strip()]
        for side in texts:
            if not texts[side].strip():
                scored[side][d] = 0.0
        for name, side, other in asks:
            text = await _ask(client, prompt(name, query=task.query, dimension=d.replace("_", " "),
                                             criteria=listing, target=_cut(texts[side], ecfg.max_report_chars),
                                             reference=_cut(other or "", ecfg.max_report_chars), n=len(crit)),
                              g.criteria_scores_guide(len(crit), 10, pairwise=other is not None), seed, name)
            calls += 1
            parsed = g.parse_criteria_scores(text or "", len(crit))
            unscored += len(crit) - len(parsed)
            scored[side][d] = dimension_score(crit, {k: v[0] for k, v in parsed.items()})
            if other is not None:
                scored["reference"][d] = dimension_score(crit, {k: v[1] for k, v in parsed.items()
                                                                if v[1] is not None})
    s_t = overall_score(rubric.weights, scored["target"])
    if not pairwise:
        return RaceResult(scored["target"], {}, s_t, None, s_t / 10, unscored, calls)
    s_r = overall_score(rubric.weights, scored["reference"])
    return RaceResult(scored["target"], scored["reference"], s_t, s_r, relative_score(s_t, s_r), unscored, calls)


# -- FACT ------------------------------------------------------------------------------------------------------


def fact_pairs(report: str) -> tuple[list[tuple[str, str]], int]:
    """(statement, URL) pairs from the report's `[n]` citations and its References list, each statement once per
    URL; and how many citations named no listed reference (dropped: there is no URL to check them against)."""
    urls = {r.number: r.url for r in g.references(report)}
    pairs, dropped = [], 0
    for statement, number in g.cited_statements(report):
        url = urls.get(number)
        if url is None:
            dropped += 1
        elif (statement, url) not in pairs:
            pairs.append((statement, url))
    return pairs, dropped


async def judge_fact_pairs(client: LLMClient, report: str, max_items: int, seed: int = 0) -> list[tuple[str, str]]:
    """FACT's fallback when the report has URLs but no `[n]` + References pairs: the judge reads the pairs out,
    held to URLs the report itself contains."""
    urls = g.urls_in(report)
    if not urls:
        return []
    text = await _ask(client, prompt("fact_extract", report=report, n=max_items),
                      g.statements_guide(urls, max_items), seed, "fact_extract")
    return list(dict.fromkeys(g.parse_statements(text or "", urls)))


async def label_statement(client: LLMClient, statement: str, page: str, seed: int = 0) -> str | None:
    text = await _ask(client, prompt("fact_label", statement=statement, page=page), g.label_guide(FACT_LABELS),
                      seed, "fact_label")
    return g.parse_label(text or "", FACT_LABELS)


def citation_accuracy(labels: Sequence[str | None]) -> float | None:
    """supported / (supported + unsupported), pooled over every checked statement; 'unknown', unreadable labels
    and pages that could not be fetched are excluded. None when nothing was supported or unsupported."""
    s, u = labels.count("supported"), labels.count("unsupported")
    return s / (s + u) if s + u else None


def effective_citations(labels_per_report: Sequence[Sequence[str | None]]) -> float | None:
    """Supported statements per report that cites anything (reports citing nothing are left out)."""
    citing = [labels for labels in labels_per_report if labels]
    return sum(labels.count("supported") for labels in citing) / len(citing) if citing else None


# -- key points (DeepResearchGym) --------------------------------------------------------------------------------


async def label_key_point(client: LLMClient, point: str, report: str, seed: int = 0) -> str | None:
    text = await _ask(client, prompt("key_point", point=point, report=report), g.label_guide(KEYPOINT_LABELS),
                      seed, "key_point")
    return g.parse_label(text or "", KEYPOINT_LABELS)


def key_point_rates(labels: Sequence[str | None]) -> tuple[float, float]:
    """(KPR, KPC) of one report: the share of its query's key points it supports, and that it contradicts."""
    n = len(labels)
    return (labels.count("supported") / n, labels.count("contradicted") / n) if n else (0.0, 0.0)


# -- statistics ------------------------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling tasks; a single value is its own interval."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * (n_boot - 1))]
    hi = means[int((1 + level) / 2 * (n_boot - 1))]
    return lo, hi


def paired_difference_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean of a − b, interval) over paired tasks: how much a beats b, with the judge's task-to-task noise."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    lo, hi = bootstrap_ci(diffs, n_boot, level, seed)
    return (sum(diffs) / len(diffs) if diffs else float("nan")), lo, hi


# -- one model's reports, scored -------------------------------------------------------------------------------


async def score_task(client: LLMClient, env, ecfg, task: EvalTask, rubric: Rubric, report: str,
                     reference: str | None, seed: int = 0) -> dict:
    """RACE, FACT and (with key points) KPR/KPC of one report: the per-task row of the evaluation table."""
    race = await race_scores(client, ecfg, task, rubric, report, reference if ecfg.race == "pairwise" else None,
                             seed)
    pairs, dropped = fact_pairs(report)
    extracted_by = "rules"
    if not pairs and g.urls_in(g.split_report(report)[0] if report else ""):
        pairs, extracted_by = await judge_fact_pairs(client, report, ecfg.max_statements, seed), "judge"
    pairs = pairs[: ecfg.max_statements]
    pages: dict[str, str] = {}
    for url in dict.fromkeys(url for _, url in pairs):  # each cited page fetched once, through the environment
        pages[url] = await asyncio.to_thread(env.crawl_page, url)

    async def label(statement: str, url: str) -> str | None:
        if pages[url].startswith("Error:"):
            return "unfetched"  # excluded, like 'unknown': nothing to check the statement against
        return await label_statement(client, statement, pages[url][: ecfg.page_chars], seed)

    # asked together: a batching engine (local, vLLM) decodes them side by side; the client caps concurrency
    labels = list(await asyncio.gather(*(label(s, u) for s, u in pairs)))
    row = {"id": task.id, "query": task.query, "language": task.language, "race": race.score,
           "race_target": race.overall_target, "race_reference": race.overall_reference,
           "race_dimensions": {d: _relative_dim(race, d) for d in DIMENSIONS},
           "race_unscored": race.unscored, "rubric": rubric.source, "fact_pairs": len(pairs),
           "fact_extracted_by": extracted_by, "fact_dropped": dropped,
           "fact_labels": labels, "statements": [p[0] for p in pairs]}
    if task.key_points:
        points = task.key_points[: ecfg.max_key_points]
        text = _cut(g.strip_citations(report), ecfg.max_report_chars)
        kp = list(await asyncio.gather(*(label_key_point(client, p, text, seed) for p in points))) \
            if report.strip() else ["absent"] * len(points)
        row["kpr"], row["kpc"] = key_point_rates(kp)
        row["key_point_labels"] = kp
    return row


def _relative_dim(race: RaceResult, d: str) -> float | None:
    """A dimension's task score: relative to the reference (pairwise), or S_d/10 (pointwise)."""
    t = race.target.get(d)
    if t is None:
        return None if race.target else 0.5  # identical reports: parity on every dimension
    if race.overall_reference is None:
        return t / 10
    r = race.reference.get(d)
    return None if r is None else relative_score(t, r)


def summarize(rows: list[dict], ecfg) -> dict[str, float]:
    """The headline scores of one model over its task rows, each mean with its bootstrap interval
    (`<metric>_ci_lo`, `<metric>_ci_hi`); RACE and KPR/KPC on 0-100, as the benchmarks report them."""
    out: dict[str, float] = {"tasks": float(len(rows))}

    def headline(name: str, values: list[float], scale: float = 1.0) -> None:
        if not values:
            return
        lo, hi = bootstrap_ci(values, ecfg.bootstrap, ecfg.confidence)
        out[name], out[f"{name}_ci_lo"], out[f"{name}_ci_hi"] = (sum(values) / len(values) * scale, lo * scale,
                                                                  hi * scale)

    headline("race", [r["race"] for r in rows], 100)
    for d in DIMENSIONS:
        headline(f"race_{d}", [r["race_dimensions"][d] for r in rows if r["race_dimensions"].get(d) is not None],
                 100)
    labels = [x for r in rows for x in r["fact_labels"]]
    acc = citation_accuracy(labels)
    if acc is not None:
        out["fact_accuracy"] = acc
        per_task = [citation_accuracy(r["fact_labels"]) for r in rows]
        lo, hi = bootstrap_ci([v for v in per_task if v is not None], ecfg.bootstrap, ecfg.confidence)
        out["fact_accuracy_ci_lo"], out["fact_accuracy_ci_hi"] = lo, hi
    # effective citations: the mean of supported statements over the reports that cite anything, so its interval
    # resamples those reports
    citing = [r["fact_labels"].count("supported") for r in rows if r["fact_labels"]]
    out["fact_effective_citations"] = effective_citations([r["fact_labels"] for r in rows]) or 0.0
    if citing:
        headline("fact_effective_citations", citing)
    out["fact_statements"] = float(len(labels))
    out["fact_supported"] = float(labels.count("supported"))
    out["fact_unsupported"] = float(labels.count("unsupported"))
    if any("kpr" in r for r in rows):
        headline("kpr", [r["kpr"] for r in rows if "kpr" in r], 100)
        headline("kpc", [r["kpc"] for r in rows if "kpc" in r], 100)
    for k in ("valid", "tool_calls", "citations", "prompt_tokens", "completion_tokens", "cost_usd"):
        values = [r[k] for r in rows if k in r]
        if values:
            out[k] = sum(values) / len(values)
    if any("valid" in r for r in rows):
        headline("valid", [r["valid"] for r in rows])
    out["race_unscored"] = float(sum(r["race_unscored"] for r in rows))
    return out


def promotion(challenger: list[dict], champion: list[dict], metric: str, ecfg) -> dict:
    """Whether the challenger beats the champion on `metric` by more than the interval: the paired bootstrap
    interval of the per-task difference lies above 0. The numbers come back either way, to be recorded."""
    if metric == "fact_accuracy":  # a pooled rate: compare per-task accuracy on the tasks where both have one
        pairs = [(citation_accuracy(a["fact_labels"]), citation_accuracy(b["fact_labels"]))
                 for a, b in zip(challenger, champion, strict=True)]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    else:
        pairs = [(float(a.get(metric, 0.0)), float(b.get(metric, 0.0)))
                 for a, b in zip(challenger, champion, strict=True)]
    a_vals, b_vals = [x for x, _ in pairs], [y for _, y in pairs]
    if not a_vals:
        return {"promote": False, "metric": metric, "reason": "no task has the metric for both models"}
    diff, lo, hi = paired_difference_ci(a_vals, b_vals, ecfg.bootstrap, ecfg.confidence)
    promote = lo > 0
    return {"promote": promote, "metric": metric, "difference": diff, "ci_lo": lo, "ci_hi": hi,
            "tasks": len(a_vals), "reason": (f"challenger beats champion on {metric} by {diff:+.3f}, interval "
                                             f"[{lo:+.3f}, {hi:+.3f}] above 0" if promote else
                                             f"difference {diff:+.3f}, interval [{lo:+.3f}, {hi:+.3f}] "
                                             f"includes or lies below 0")}


# -- judge calls -----------------------------------------------------------------------------------------------


async def _ask(client: LLMClient, content: str, guide: g.Guide, seed: int, tag: str) -> str | None:
    """One judge call in a guided form; None when the call failed (counted by the caller as unscored)."""
    try:
        resp = await client.chat([{"role": "user", "content": content}], guide=guide, seed=seed, tag=tag)
    except LLMError:
        return None
    return resp.text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n[... cut]"


def gather_limited(coros, limit: int):
    """asyncio.gather with at most `limit` coroutines running at once."""
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return asyncio.gather(*(one(c) for c in coros))

"""Tasks of the `filter` flow: the three tiers, the review gate, and the report.

NO_CACHE throughout: what a re-run reuses lives in files (the judge's calls in the response cache, verdicts in
the review queue), not in Prefect's result cache."""

from __future__ import annotations

import asyncio
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from oresearcher.config import Settings
from oresearcher.filtering import Verdict


@task(name="load-traces", cache_policy=NO_CACHE)
def load_traces(cfg: Settings) -> tuple[str, list[dict], dict[str, str]]:
    """(seed version, its settled trace records, topic by seed id); retryable failures wait for synthesis."""
    from oresearcher.seeds import load_seeds
    from oresearcher.synthesis import open_trace_store

    seed_version, seeds = load_seeds(cfg.paths.data)
    topics = {s.id: s.topic for s in seeds}
    records = [r for r in open_trace_store(cfg.paths.data).latest() if r["seed_id"] in topics]
    waiting = [r for r in records if r.get("retryable")]
    if waiting:
        get_run_logger().warning("%d traces failed retryably and wait for `oresearcher synthesize`: not filtered",
                                 len(waiting))
    return seed_version, [r for r in records if not r.get("retryable")], topics


@task(name="policy-tokenizer", cache_policy=NO_CACHE)
def policy_token_counter(cfg: Settings):
    """Token counts in the policy's own tokenizer (the context budget is the policy's); a rough count, with a
    warning, when it cannot be loaded."""
    from oresearcher.criteria import rough_token_count

    try:
        from transformers import AutoTokenizer

        from models.resolve import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name, cfg.paths.cache))
    except Exception as e:  # noqa: BLE001 - any failure to load leaves the estimate, said out loud
        get_run_logger().warning("policy tokenizer unavailable (%s): counting ~4 characters a token", e)
        return rough_token_count
    return lambda text: len(tok(text, add_special_tokens=False).input_ids)


@task(name="filter-by-rules", cache_policy=NO_CACHE)
def filter_by_rules(records: list[dict], topics: dict[str, str], cfg: Settings, count_tokens) -> list[Verdict]:
    """Tier 1: every hard rule (method.md §4), then near-duplicate candidates of one seed."""
    from oresearcher.filtering import apply_rules

    rules = cfg.filter.rules
    if rules.context_tokens is None:
        rules = rules.model_copy(update={"context_tokens": cfg.train.max_seq_len})
    return apply_rules(records, topics, rules, count_tokens)


@task(name="judge-traces", cache_policy=NO_CACHE)
async def judge_traces(records: list[dict], verdicts: list[Verdict], cfg: Settings, run: str) -> dict:
    """Tier 2: the judge scores every trace that passed tier 1 (calls cached in `data/llm.sqlite`, costed,
    capped by `filter.judge.max_cost_usd`). Returns the judge's identity and cost."""
    from models.llm import BudgetExceeded
    from oresearcher.filtering import apply_scores
    from oresearcher.judge import make_judge

    jc = cfg.filter.judge
    judge = make_judge(cfg, run)
    client = judge.client
    by_id = {r["id"]: r for r in records}
    todo = [v for v in verdicts if v.kept]
    sem = asyncio.Semaphore(jc.concurrency)

    async def one(v: Verdict):
        async with sem:
            return v.id, await judge.score(v.query, by_id[v.id]["report"] or "")

    start = time.perf_counter()
    try:
        scores = dict(await asyncio.gather(*(one(v) for v in todo)))
    except BudgetExceeded as e:  # the calls that finished are cached: a re-run with more budget pays only the rest
        raise BudgetExceeded(f"filter.judge.max_cost_usd: {e}; finished judge calls are cached, run again with a "
                             "larger budget") from None
    finally:
        await client.aclose()
    apply_scores(verdicts, scores, jc.keep, jc.threshold)
    u = judge.usage
    return {"identity": judge.identity, "cost": {"calls": u.calls, "cache_hits": u.cache_hits, "cost_usd": u.cost_usd,
                                                 "prompt_tokens": u.prompt_tokens,
                                                 "completion_tokens": u.completion_tokens,
                                                 "seconds": round(time.perf_counter() - start, 2)}}


@task(name="queue-for-review", cache_policy=NO_CACHE)
def queue_for_review(version: str, records: list[dict], verdicts: list[Verdict], cfg: Settings) -> int:
    """Tier 3: a topic-stratified sample of the kept traces into the review queue; returns the sample size."""
    from oresearcher.filtering import review_sample
    from oresearcher.review import review_payload
    from oresearcher.review.queue import ReviewQueue, queue_path

    by_id = {r["id"]: r for r in records}
    sample = review_sample([v for v in verdicts if v.kept], cfg.review, salt=version)
    items = [{"trace_id": v.id, "topic": v.topic, "payload": review_payload(by_id[v.id], v.score, v.reason, v.topic)}
             for v in sample]
    ReviewQueue(queue_path(cfg.paths.data)).add_batch(version, items, label=cfg.name)
    return len(sample)


@task(name="wait-for-review", cache_policy=NO_CACHE)
async def wait_for_review(version: str, cfg: Settings) -> bool:
    """Poll the queue until every sampled trace of `version` has a verdict (True) or the wait times out (False);
    the Prefect UI shows the share reviewed as a progress artifact."""
    from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

    from oresearcher.review.queue import ReviewQueue, queue_path

    queue = ReviewQueue(queue_path(cfg.paths.data))
    log = get_run_logger()
    artifact = await acreate_progress_artifact(0.0, key="review-progress", description=f"batch {version} reviewed")
    deadline = time.monotonic() + cfg.review.wait_timeout_s
    shown = -1
    while True:
        p = queue.progress(version)
        if p.decided != shown:
            shown = p.decided
            await aupdate_progress_artifact(artifact, 100.0 * p.decided / max(1, p.items))
            log.info("review of batch %s: %d of %d traces decided (`oresearcher review` serves the page)",
                     version, p.decided, p.items)
        if p.done or p.items == 0:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(cfg.review.poll_s)


@task(name="decide-gate", cache_policy=NO_CACHE)
def decide_gate(version: str, sampled: int, reviewed_all: bool | None, cfg: Settings) -> dict:
    """accepted / blocked from the sampled rejection rate once every sampled trace has a verdict; else
    `pending_review` (waited, timed out) or `unreviewed` (did not wait: review.required is false)."""
    from oresearcher.filtering import gate_decision
    from oresearcher.review.queue import ReviewQueue, queue_path

    queue = ReviewQueue(queue_path(cfg.paths.data))
    p = queue.progress(version)
    rejected = [v["trace_id"] for v in queue.verdicts(version) if v["verdict"] == "reject"]
    if p.done:
        return {**gate_decision(p.decided, p.rejected, sampled, cfg.review), "human_rejected": rejected}
    if p.items == 0:
        status, reason = "unreviewed", "no trace passed tiers 1-2: nothing to review"
    elif reviewed_all is False:
        status, reason = "pending_review", f"{p.decided} of {p.items} sampled traces reviewed when the wait ended"
    else:
        status, reason = "unreviewed", (f"review.required is false: not waiting for the {p.items} sampled traces "
                                        f"({p.decided} reviewed so far)")
    return {"status": status, "reason": reason, "sampled": sampled, "reviewed": p.decided, "rejected": p.rejected,
            "human_rejected": rejected, "decided": time.time()}


@task(name="publish-filter-report", cache_policy=NO_CACHE)
def publish_filter_report(report: dict, mlflow, run_id: str) -> str:
    """The report as a Prefect table artifact, MLflow artifacts (JSON and markdown) and `filter/*` metrics."""
    from prefect.artifacts import create_table_artifact

    rows = [{"tier": report["rule_tier"][rule], "rule": rule, "traces": n,
             "example": (report["examples"][rule][0]["problem"] if report["examples"].get(rule) else "")[:160]}
            for rule, n in report["rules"].items()]
    c, j, gate = report["counts"], report["judge"], report["gate"]
    summary = format_counts(report)
    create_table_artifact(rows, key="filter-report", description=f"**{summary}**")
    table = "\n".join(["| tier | rule | traces | example |", "|---|---|---|---|"] +
                      [f"| {r['tier']} | {r['rule']} | {r['traces']} | {r['example'].replace('|', '/')} |"
                       for r in rows])
    mlflow.log_dict(run_id, report, "filter/report.json")
    mlflow.log_text(run_id, f"# Filter report {report['version']}\n\n{summary}\n\n{table}\n", "filter/report.md")
    metrics = {"input": c["input"], "tier1_kept": c["tier1_kept"], "tier2_kept": c["tier2_kept"],
               "kept": c["tier2_kept"], "sampled": gate.get("sampled", 0), "reviewed": gate.get("reviewed", 0),
               "review_rejected": gate.get("rejected", 0), "judge_parsed": j["parsed"],
               "judge_parsed_rate": j["parsed"] / j["judged"] if j["judged"] else 1.0,
               "judge_cost_usd": j["cost_usd"], "reward_format": report["reward_terms"]["format"],
               "reward_tool": report["reward_terms"]["tool"]}
    if j["mean_score"] is not None:
        metrics["judge_mean_score"] = j["mean_score"]
    metrics.update({f"rule/{rule}": n for rule, n in report["rules"].items()})
    for key, value in metrics.items():
        mlflow.log_metric(run_id, f"filter/{key}", float(value))
    return summary


def format_counts(report: dict) -> str:
    c, gate = report["counts"], report["gate"]
    return (f"{c['input']} traces -> tier 1 (rules) kept {c['tier1_kept']} -> tier 2 (judge) kept {c['tier2_kept']}"
            f" -> tier 3 (human): {gate.get('sampled', 0)} sampled, {gate['status']}")

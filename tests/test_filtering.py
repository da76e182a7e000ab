"""Filtering tiers 1-2 over trace records, the review sample, the gate, and training's refusal of what it blocks."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from traces import REPORT, UNCITED, search
from traces import research_trace as trace

from oresearcher import filtering as f
from oresearcher.config import JudgeConfig, JudgeModelConfig, ReviewConfig, RulesConfig
from oresearcher.criteria import rough_token_count
from oresearcher.judge import Score

RULES = RulesConfig(min_report_chars=50, context_tokens=100_000)
GOOD = trace([search("a")], [search("b")])


def record(rid: str, seed: str, candidate: int = 0, text: str | None = GOOD, failure: str | None = None) -> dict:
    report = REPORT if text == GOOD else (UNCITED if text else None)
    return {"id": rid, "seed_id": seed, "candidate": candidate, "query": f"query of {seed}", "trace": text,
            "report": report, "failure": failure}


def verdict(rid: str, topic: str) -> f.Verdict:
    return f.Verdict(rid, f"seed-{rid}", 0, "q", topic)


def test_tier_one_counts_failures_rules_and_near_duplicates():
    records = [record("a", "s1"), record("b", "s1", 1), record("c", "s2", text=trace([search("x")], report=UNCITED)),
               record("d", "s3", text=None, failure="error: teacher unreachable")]
    verdicts = f.apply_rules(records, {"s1": "History"}, RULES, rough_token_count)
    by = {v.id: v for v in verdicts}
    assert by["a"].kept and by["a"].topic == "History" and by["a"].terms == {"format": 1.0, "tool": 1.0}
    assert by["b"].rejected_at == 1 and "near_duplicate" in by["b"].rules  # same report as candidate 0
    assert by["c"].rejected_at == 1 and {"citations", "min_tool_calls"} <= set(by["c"].rules)
    assert by["d"].rules == {"synthesis_failed": ["error: teacher unreachable"]}


def test_tier_two_threshold_unparseable_errors_and_best_of_k():
    verdicts = [f.Verdict(i, s, c, "q") for i, s, c in [("a", "s1", 0), ("b", "s1", 1), ("c", "s2", 0),
                                                        ("d", "s3", 0), ("e", "s4", 0)]]
    scores = {"a": Score(7, "fine"), "b": Score(9, "better"), "c": Score(3, "weak"), "d": Score(None, "rambling"),
              "e": Score(None, error="judge unreachable")}
    f.apply_scores(verdicts, scores, "best_of_k", threshold=5)
    by = {v.id: v for v in verdicts}
    assert [v.id for v in verdicts if v.kept] == ["b"]
    assert "not_best_of_k" in by["a"].rules and "below_threshold" in by["c"].rules
    assert "judge_unparseable" in by["d"].rules and "judge_error" in by["e"].rules
    again = [f.Verdict(i, s, c, "q") for i, s, c in [("a", "s1", 0), ("b", "s1", 1)]]
    f.apply_scores(again, scores, "threshold", threshold=5)
    assert all(v.kept for v in again)  # threshold mode keeps every candidate above it


def test_the_review_sample_has_the_minimum_the_rate_and_every_topic():
    kept = [verdict(f"h{i}", "History") for i in range(300)] + [verdict(f"s{i}", "Science") for i in range(90)] + \
           [verdict("rare", "Law")]
    cfg = ReviewConfig(rate=0.05, min_per_batch=20)
    sample = f.review_sample(kept, cfg, salt="v1")
    assert len(sample) == 20 and len({v.id for v in sample}) == 20  # 5% of 391 is 20
    topics = Counter(v.topic for v in sample)
    assert topics["Law"] == 1 and 14 <= topics["History"] <= 16 and 4 <= topics["Science"] <= 5
    assert [v.id for v in f.review_sample(kept, cfg, salt="v1")] == [v.id for v in sample]  # seeded
    big = f.review_sample(kept * 3, ReviewConfig(rate=0.1, min_per_batch=20), salt="v1")
    assert len(big) == 118  # 10% of 1173, rounded up
    assert len(f.review_sample(kept[:7], cfg, salt="v1")) == 7  # fewer than the minimum: all of them


@pytest.mark.parametrize(("rejected", "status"), [(4, "accepted"), (5, "blocked")])
def test_the_gate_follows_the_sampled_rejection_rate(rejected, status):
    gate = f.gate_decision(reviewed=20, rejected=rejected, sampled=20, cfg=ReviewConfig(max_reject_rate=0.2))
    assert gate["status"] == status and f"{rejected} of 20" in gate["reason"]


def _version(tmp_path, gate: dict) -> str:
    records = [record("a", "s1"), record("b", "s2")]
    verdicts = [f.Verdict("a", "s1", 0, "q"), f.Verdict("b", "s2", 0, "q")]
    f.write_version(tmp_path, "v1", records, verdicts)
    f.write_gate(tmp_path, "v1", gate)
    return "v1"


def test_training_refuses_a_blocked_or_waiting_version_and_drops_human_rejections(tmp_path):
    with pytest.raises(f.DatasetError, match="no filtered dataset"):
        f.training_set(tmp_path)
    _version(tmp_path, {"status": "blocked", "reason": "sampled rejection rate 0.50 > 0.20"})
    with pytest.raises(f.DatasetError, match="v1 is blocked from training: sampled rejection rate 0.50"):
        f.training_set(tmp_path)
    _version(tmp_path, {"status": "pending_review", "reason": "3 of 20 reviewed"})
    with pytest.raises(f.DatasetError, match="waiting for human review"):
        f.training_set(tmp_path, "v1")
    _version(tmp_path, {"status": "accepted", "reason": "ok", "human_rejected": ["b"]})
    version, records, gate = f.training_set(tmp_path)
    assert version == "v1" and [r["id"] for r in records] == ["a"] and gate["status"] == "accepted"
    _version(tmp_path, {"status": "unreviewed", "reason": "review.required is false"})
    assert len(f.training_set(tmp_path)[1]) == 2


def test_the_version_depends_on_inputs_settings_judge_and_what_was_kept():
    kept = [f.Verdict("a", "s1", 0, "q", score=7), f.Verdict("b", "s2", 0, "q", score=5, rejected_at=2)]
    base = f.version_id(["a", "b"], {"x": 1}, {"model": "m"}, kept)
    assert base == f.version_id(["b", "a"], {"x": 1}, {"model": "m"}, kept)
    rescored = [f.Verdict("a", "s1", 0, "q", score=8), kept[1]]
    assert len({base, f.version_id(["a"], {"x": 1}, {"model": "m"}, kept),
                f.version_id(["a", "b"], {"x": 2}, {"model": "m"}, kept),
                f.version_id(["a", "b"], {"x": 1}, {"model": "n"}, kept),
                f.version_id(["a", "b"], {"x": 1}, {"model": "m"}, rescored)}) == 5


def test_the_judge_on_a_random_model_still_returns_a_parseable_score():
    """Guided decoding holds even noise to the score form: every score parses, each a number on the scale."""
    from models.llm import make_client
    from models.tiny import build_tiny_model
    from oresearcher.judge import Judge

    cfg = JudgeConfig(model=JudgeModelConfig(name=build_tiny_model(), max_batch=4),
                      criteria="generated", n_criteria=2)
    client = make_client(cfg.model)

    async def run():
        judge = Judge(client, cfg)
        try:
            return await asyncio.gather(*(judge.score(f"question {i}", REPORT) for i in range(4))), judge
        finally:
            await client.aclose()

    scores, judge = asyncio.run(run())
    assert all(s.parsed and 0 <= s.value <= 10 and s.error is None for s in scores)
    assert all(len(s.criteria) == 2 for s in scores)
    assert judge.usage.calls == 8 and judge.usage.guided_calls == 8  # 4 criteria lists + 4 scores
    assert set(judge.identity) >= {"model", "prompt_sha", "temperature", "seed"}
    assert json.dumps(judge.identity)


def test_a_version_not_waited_for_is_decided_once_its_sample_is_reviewed(settings_factory, tmp_path):
    """review.required false: the flow marks the version unreviewed; once reviewers finish its sample, the next
    filter run decides it like a waiting one would."""
    from oresearcher.review.queue import ReviewQueue, queue_path
    from tasks.filtering import decide_gate

    cfg = settings_factory(f"paths.data_dir={tmp_path / 'data'}", "review.max_reject_rate=0.4")
    queue = ReviewQueue(queue_path(cfg.paths.data))
    queue.add_batch("v1", [{"trace_id": f"t{i}", "topic": "", "payload": {}} for i in range(3)])
    assert decide_gate.fn("v1", 3, None, cfg)["status"] == "unreviewed"
    for verdict in ("accept", "reject", "accept"):
        item = queue.claim("alice", 60)
        queue.decide(item["id"], "alice", verdict, "format" if verdict == "reject" else None, "", 60)
    gate = decide_gate.fn("v1", 3, None, cfg)
    assert gate["status"] == "accepted" and gate["human_rejected"] == ["t1"] and "1 of 3" in gate["reason"]
    assert decide_gate.fn("v1", 3, None, cfg.model_copy(update={"review": cfg.review.model_copy(
        update={"max_reject_rate": 0.3})}))["status"] == "blocked"


def test_a_spent_judge_budget_stops_filtering_instead_of_scoring_traces_as_failures():
    """BudgetExceeded is not a judge failure (which would reject the trace): it stops the run, and a re-run with a
    larger budget pays only for the calls not yet cached."""
    from models.llm import Budget, BudgetExceeded, make_client
    from models.tiny import build_tiny_model
    from oresearcher.judge import Judge

    cfg = JudgeConfig(model=JudgeModelConfig(name=build_tiny_model()))
    client = make_client(cfg.model, budget=Budget(max_cost_usd=0.0))
    with pytest.raises(BudgetExceeded):
        asyncio.run(Judge(client, cfg).score("q", REPORT))

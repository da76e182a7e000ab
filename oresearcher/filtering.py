"""Three-tier filtering (method.md §4): only traces that pass all three tiers may train a model.

1. rules (`criteria.broken_rules`), then near-duplicate candidates of one seed;
2. the LLM judge (`judge.Judge`): a score >= threshold, or the best of each seed's k candidates;
3. a human spot-check of a sample of what passed (`review.queue`), which gates the whole batch.

A filtered dataset version is a folder `data/filtered/<version>/`:
- `traces.jsonl`: the kept trace records, each with its judge score;
- `verdicts.jsonl`: one line per input record: the tier that rejected it (if any), the rules, the score;
- `report.json`: counts per tier and rule, rejected examples, the judge's identity and cost;
- `gate.json`: the review decision: `unreviewed`, `pending_review`, `accepted` or `blocked` (with the reason).
`data/filtered/latest.json` names the newest version. Training reads through `training_set`, which refuses a
blocked version, and one still waiting for review, with a clear error.

The version id is a hash of what decided it and what it holds: the input trace ids, the filter settings, the
judge's identity, and the kept traces with their scores. Re-running the filter on the same inputs reproduces the
same version (judge calls come from the cache) and keeps its review decision.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from oresearcher.config import ReviewConfig, RulesConfig
from oresearcher.criteria import NEAR_DUPLICATE, TokenCounter, TraceView, broken_rules, near_duplicates, reward_terms
from oresearcher.store import atomic_write_text

SYNTHESIS_FAILED = "synthesis_failed"  # a record with no trace: counted in tier 1 under this name
JUDGE_UNPARSEABLE, JUDGE_ERROR, BELOW_THRESHOLD, NOT_BEST_OF_K = \
    "judge_unparseable", "judge_error", "below_threshold", "not_best_of_k"
HUMAN_REJECTED = "human_rejected"


class DatasetError(RuntimeError):
    """A filtered dataset that cannot train a model: missing, blocked, or still waiting for review."""


@dataclass
class Verdict:
    id: str
    seed_id: str
    candidate: int
    query: str
    topic: str = ""
    rejected_at: int | None = None  # tier that rejected it: 1 rules, 2 judge, 3 human; None: kept
    rules: dict[str, list[str]] = field(default_factory=dict)  # rule -> what broke it
    score: int | None = None
    reason: str = ""
    terms: dict[str, float] = field(default_factory=dict)  # reward terms (criteria.reward_terms), as metrics

    @property
    def kept(self) -> bool:
        return self.rejected_at is None

    def reject(self, tier: int, rule: str, why: str) -> None:
        self.rejected_at = self.rejected_at or tier
        self.rules.setdefault(rule, []).append(why)


def filtered_root(data_dir: Path) -> Path:
    return Path(data_dir) / "filtered"


# ----------------------------------------------------------------------------------------------------- tier 1

def apply_rules(records: list[dict], topics: dict[str, str], cfg: RulesConfig,
                count_tokens: TokenCounter) -> list[Verdict]:
    """A verdict per record: every rule it breaks; then, per seed, near-duplicates of a kept candidate."""
    verdicts = []
    for r in records:
        v = Verdict(r["id"], r["seed_id"], r["candidate"], r["query"], topics.get(r["seed_id"], ""))
        if r.get("failure") or not r.get("trace"):
            v.reject(1, SYNTHESIS_FAILED, r.get("failure") or "no trace")
        else:
            view = TraceView.of(r["query"], r["trace"])
            v.terms = reward_terms(view, cfg)
            for rule, problems in broken_rules(view, cfg, count_tokens).items():
                v.rules[rule] = problems
                v.rejected_at = 1
        verdicts.append(v)
    by_seed: dict[str, list[tuple[str, str]]] = defaultdict(list)
    reports = {r["id"]: r.get("report") or "" for r in records}
    for v in verdicts:
        if v.kept:
            by_seed[v.seed_id].append((v.id, reports[v.id]))
    dupes = {rid: first for group in by_seed.values() for rid, first in
             near_duplicates(group, cfg.near_duplicate_threshold).items()}
    for v in verdicts:
        if v.id in dupes:
            v.reject(1, NEAR_DUPLICATE, f"report near-duplicates candidate {dupes[v.id]}")
    return verdicts


# ----------------------------------------------------------------------------------------------------- tier 2

def apply_scores(verdicts: list[Verdict], scores: dict[str, object], keep: str, threshold: int) -> None:
    """Tier 2 on the verdicts that passed tier 1, from the judge's `Score`s by trace id."""
    judged = [v for v in verdicts if v.kept]
    for v in judged:
        s = scores[v.id]
        v.score, v.reason = s.value, s.reason
        if s.error:
            v.reject(2, JUDGE_ERROR, s.error)
        elif s.value is None:
            v.reject(2, JUDGE_UNPARSEABLE, "the judge's answer holds no 'Score: n' line")
        elif s.value < threshold:
            v.reject(2, BELOW_THRESHOLD, f"score {s.value} < {threshold}")
    if keep == "best_of_k":
        best: dict[str, Verdict] = {}
        for v in judged:
            if v.kept and (v.seed_id not in best or v.score > best[v.seed_id].score):
                best[v.seed_id] = v
        for v in judged:
            if v.kept and best[v.seed_id] is not v:
                v.reject(2, NOT_BEST_OF_K, f"score {v.score}; candidate {best[v.seed_id].candidate} scored "
                                           f"{best[v.seed_id].score}")


# ----------------------------------------------------------------------------------------------------- tier 3

def review_sample(kept: list[Verdict], cfg: ReviewConfig, salt: str) -> list[Verdict]:
    """max(min_per_batch, rate x batch) of the kept traces (all, if fewer), stratified by topic: each topic
    gets its share by largest remainder, at least one while the sample has room; the draw is seeded by `salt`."""
    n = min(len(kept), max(cfg.min_per_batch, math.ceil(cfg.rate * len(kept))))
    if n == len(kept):
        return list(kept)
    by_topic: dict[str, list[Verdict]] = defaultdict(list)
    for v in sorted(kept, key=lambda v: v.id):
        by_topic[v.topic].append(v)
    rng = random.Random(salt)
    topics = sorted(by_topic)
    quota = {t: len(by_topic[t]) * n / len(kept) for t in topics}
    take = dict.fromkeys(topics, 0)
    for t in sorted(topics, key=lambda t: (-len(by_topic[t]), t))[:n]:  # every topic once, while there is room
        take[t] = 1
    while sum(take.values()) < n:  # then the topic furthest below its proportional share
        t = max((t for t in topics if take[t] < len(by_topic[t])), key=lambda t: (quota[t] - take[t], t))
        take[t] += 1
    return [v for t in topics for v in rng.sample(by_topic[t], take[t])]


def gate_decision(reviewed: int, rejected: int, sampled: int, cfg: ReviewConfig) -> dict:
    """accepted / blocked from the sampled rejection rate, with the numbers and the reason."""
    rate = rejected / reviewed if reviewed else 0.0
    blocked = rate > cfg.max_reject_rate
    reason = (f"sampled rejection rate {rate:.2f} {'>' if blocked else '<='} {cfg.max_reject_rate:.2f} "
              f"({rejected} of {reviewed} reviewed traces rejected)")
    return {"status": "blocked" if blocked else "accepted", "reason": reason, "sampled": sampled,
            "reviewed": reviewed, "rejected": rejected, "reject_rate": round(rate, 4),
            "max_reject_rate": cfg.max_reject_rate, "decided": time.time()}


# --------------------------------------------------------------------------------------------------- versions

def version_id(input_ids: list[str], settings: dict, judge_identity: dict, verdicts: list[Verdict]) -> str:
    """What decided the version, and what it holds: the same id means the same traces with the same scores (a judge
    on another machine may score differently: batched floating point is not bit-identical everywhere)."""
    decided = sorted((v.id, v.score) for v in verdicts if v.kept)
    blob = json.dumps([sorted(input_ids), settings, judge_identity, decided], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_version(data_dir: Path, version: str, records: list[dict], verdicts: list[Verdict]) -> Path:
    """The kept traces (with their judge scores and topics) and every verdict; `latest.json` then names it."""
    out = filtered_root(data_dir) / version
    by_id = {v.id: v for v in verdicts}
    kept = [{**r, "judge": {"score": by_id[r["id"]].score, "reason": by_id[r["id"]].reason},
             "topic": by_id[r["id"]].topic} for r in records if by_id[r["id"]].kept]
    atomic_write_text(out / "traces.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    atomic_write_text(out / "verdicts.jsonl", "".join(json.dumps(asdict(v), ensure_ascii=False) + "\n"
                                                      for v in verdicts))
    atomic_write_text(filtered_root(data_dir) / "latest.json", json.dumps({"version": version}))
    return out


def write_report(data_dir: Path, version: str, report: dict) -> None:
    atomic_write_text(filtered_root(data_dir) / version / "report.json", json.dumps(report, indent=1,
                                                                                    ensure_ascii=False))


def read_gate(data_dir: Path, version: str) -> dict | None:
    path = filtered_root(data_dir) / version / "gate.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_gate(data_dir: Path, version: str, gate: dict) -> None:
    atomic_write_text(filtered_root(data_dir) / version / "gate.json", json.dumps(gate, indent=1))


def latest_version(data_dir: Path) -> str | None:
    path = filtered_root(data_dir) / "latest.json"
    return json.loads(path.read_text())["version"] if path.exists() else None


def training_set(data_dir: Path, version: str | None = None) -> tuple[str, list[dict], dict]:
    """(version, kept trace records, gate) of a filtered version that may train a model: accepted or unreviewed.
    Traces a reviewer rejected are left out even when their batch passed."""
    version = version or latest_version(data_dir)
    if version is None:
        raise DatasetError(f"no filtered dataset in {filtered_root(data_dir)}: run `oresearcher filter` first")
    folder = filtered_root(data_dir) / version
    gate = read_gate(data_dir, version)
    if not (folder / "traces.jsonl").exists() or gate is None:
        raise DatasetError(f"filtered dataset {version} does not exist (or was never finished) in "
                           f"{filtered_root(data_dir)}")
    if gate["status"] == "blocked":
        raise DatasetError(f"filtered dataset {version} is blocked from training: {gate['reason']}. Re-synthesize "
                           "or change the filter, then run `oresearcher filter` again")
    if gate["status"] == "pending_review":
        raise DatasetError(f"filtered dataset {version} is waiting for human review ({gate['reason']}): review it "
                           "with `oresearcher review`, then run `oresearcher filter` again")
    dropped = set(gate.get("human_rejected", []))
    records = [json.loads(line) for line in (folder / "traces.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if r["id"] not in dropped]
    if not records:
        raise DatasetError(f"filtered dataset {version} holds no trace that passed all tiers: see its report.json")
    return version, records, gate


# ----------------------------------------------------------------------------------------------------- report

def filter_report(verdicts: list[Verdict], judge_identity: dict, judge_cost: dict, examples_per_rule: int = 3) -> dict:
    """Counts per tier and rule, and a few rejected examples of each rule."""
    n = len(verdicts)
    tier1 = [v for v in verdicts if v.rejected_at != 1]
    tier2 = [v for v in tier1 if v.rejected_at != 2]
    per_rule: Counter[str] = Counter()
    examples: dict[str, list[dict]] = defaultdict(list)
    for v in verdicts:
        for rule, problems in v.rules.items():
            per_rule[rule] += 1
            if len(examples[rule]) < examples_per_rule:
                examples[rule].append({"id": v.id, "query": v.query[:120], "problem": problems[0][:200]})
    scores = [v.score for v in tier1 if v.score is not None]
    return {
        "counts": {"input": n, "tier1_kept": len(tier1), "tier2_kept": len(tier2),
                   "tier1_rejected": n - len(tier1), "tier2_rejected": len(tier1) - len(tier2)},
        "rules": dict(per_rule.most_common()),
        "rule_tier": {rule: next(v.rejected_at for v in verdicts if rule in v.rules) for rule in per_rule},
        "examples": dict(examples),
        "judge": {**judge_identity, "judged": len(tier1), "parsed": len(scores),
                  "mean_score": sum(scores) / len(scores) if scores else None,
                  "scores": dict(sorted(Counter(scores).items())), **judge_cost},
        "reward_terms": {k: sum(v.terms.get(k, 0.0) for v in verdicts) / max(1, n) for k in ("format", "tool")},
    }

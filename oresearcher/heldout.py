"""The measured effect of training (roadmap stage 3): each model runs the held-out split unguided, through the same
policy runtime GRPO uses, and every trace is measured by the filter's own parser, rules and judge.

    rows = await heldout_traces(cfg, model_dir, queries, judge)     # one dict of metrics per query
    print(table({"base": means(rows_base), "sft": means(rows_sft), "grpo": means(rows_grpo)}))

Unguided means no decoding grammar: whatever format a model keeps, it learned. The split (`seeds/heldout.jsonl`)
never reaches a training stage: ingestion keeps look-alikes of it out of every seed set.
"""

from __future__ import annotations

import asyncio

from oresearcher.config import Settings
from oresearcher.criteria import TraceView, mean_metrics, trace_metrics

# (metric, column title) of the printed table, in order
COLUMNS = [("valid", "format valid"), ("tool_calls", "tool calls"), ("citations", "citations"),
           ("observed_reference_rate", "observed refs"), ("reward_judge", "R_base"), ("reward", "mean reward")]


def policy_client(cfg: Settings, model_dir: str, rows: int):
    """The one LLM client, unguided, over a trained (full-weights) folder, its responses cached like any other."""
    from models.llm import LLMStore, make_client

    h = cfg.heldout
    mc = cfg.model.model_copy(update={"name": model_dir, "guided": False, "temperature": h.temperature,
                                      "repetition_penalty": h.repetition_penalty, "max_batch": rows,
                                      "max_new_tokens": cfg.rollout.max_new_tokens})
    return make_client(mc, store=LLMStore(cfg.paths.data / "llm.sqlite"), cache_dir=cfg.paths.cache, key="model")


async def heldout_traces(cfg: Settings, model_dir: str, queries: list[str], judge, env=None) -> list[dict]:
    """Each query's unguided rollout by the model in `model_dir`, with its trace metrics and reward terms."""
    from oresearcher.grpo import judge_terms, total_reward
    from oresearcher.policy import rollout
    from oresearcher.research.environment import ResearchEnvironment

    env = env or ResearchEnvironment.from_config(cfg)
    client = policy_client(cfg, model_dir, len(queries))
    try:
        outs = await asyncio.gather(*(rollout(client, env, q, cfg.rollout, seed=cfg.heldout.seed + i)
                                      for i, q in enumerate(queries)))
    finally:
        await client.aclose()
    judged = await asyncio.to_thread(judge_terms, judge, queries, [o.trace for o in outs])
    rows = []
    for o, r_base in zip(outs, judged, strict=True):
        m = trace_metrics(TraceView.of(o.query, o.trace), cfg.filter.rules)
        terms = {"judge": r_base, "tool": m["reward_tool"], "format": m["reward_format"]}
        rows.append({"query": o.query, "trace": o.trace, "stop_reason": o.stop_reason,
                     "metrics": {**m, "reward_judge": r_base or 0.0, "judged": float(r_base is not None),
                                 "reward": total_reward(terms, cfg.grpo.reward_weights)}})
    return rows


def means(rows: list[dict]) -> dict[str, float]:
    return mean_metrics([r["metrics"] for r in rows])


def table(results: dict[str, dict[str, float]], n: int) -> str:
    """The side-by-side table the pipeline prints: one row per model."""
    head = ["model", *(title for _, title in COLUMNS)]
    lines = [head]
    for label, m in results.items():
        lines.append([label, f"{m.get('valid', 0):.0%}", *(f"{m.get(k, 0):.2f}" for k, _ in COLUMNS[1:])])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [f"held-out split, {n} queries, unguided:"]
    out += ["  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                       strict=True)))
            for row in lines]
    return "\n".join(out)

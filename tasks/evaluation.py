"""Tasks of the `evaluate` flow: a policy's reports on a query set, the frozen reference reports, the judge's
scores, what gets logged where, and the promotion of a challenger."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from oresearcher.config import Settings
from oresearcher.evaluation import EvalTask
from oresearcher.registry import model_version

EVAL_PROMPTS = ("race_weights.md", "race_criteria.md", "race_pairwise.md", "race_pointwise.md", "fact_extract.md",
                "fact_label.md", "key_point.md")


def judge_identity(judge, ecfg) -> dict:
    """What every evaluation score depends on besides its inputs: the judge's model, prompts, temperature, seed."""
    from oresearcher.agents import PROMPTS

    sha = hashlib.sha256()
    for name in EVAL_PROMPTS:
        sha.update(name.encode() + (PROMPTS / name).read_bytes())
    ident = judge.identity
    return {"model": ident["model"], "prompt_sha": sha.hexdigest()[:12], "temperature": ident["temperature"],
            "seed": ident["seed"], "guided": ident["guided"], "race": ecfg.race,
            "weight_samples": ecfg.weight_samples, "confidence": ecfg.confidence}


def policy_client(cfg: Settings, model: str, rows: int):
    """The one LLM client over the policy to evaluate: a registered version (`models:/...`), a model name or
    folder, or an OpenAI-compatible endpoint `http(s)://host/v1#served-name`; unguided, decoded as `heldout`."""
    from models.llm import LLMStore, make_client
    from oresearcher import heldout

    if model.startswith(("http://", "https://")):
        base_url, _, served = model.partition("#")
        mc = cfg.model.model_copy(update={
            "backend": "openai", "base_url": base_url, "name": served or "policy", "served_name": served or None,
            "api_key_env": cfg.evaluate.endpoint_api_key_env, "guided": False, "grammar_api": "none",
            "temperature": cfg.heldout.temperature, "max_new_tokens": cfg.rollout.max_new_tokens})
        return make_client(mc, store=LLMStore(cfg.paths.data / "llm.sqlite"), cache_dir=cfg.paths.cache,
                           key="evaluate.model")
    from tasks.heldout import local_model

    return heldout.policy_client(cfg, local_model.fn(cfg, model), rows)


async def policy_reports(cfg: Settings, model: str, tasks: list[EvalTask], env) -> list[dict]:
    """Each task's unguided rollout by `model` through the policy runtime, with its trace metrics and usage.
    Seeds follow `heldout` (seed + task index), so the held-out split's rollouts come from the response cache."""
    from oresearcher.criteria import TraceView, trace_metrics
    from oresearcher.policy import rollout

    client = policy_client(cfg, model, len(tasks))
    try:
        outs = await asyncio.gather(*(rollout(client, env, t.query, cfg.rollout, seed=cfg.heldout.seed + i)
                                      for i, t in enumerate(tasks)))
    finally:
        await client.aclose()
    rows = []
    for t, o in zip(tasks, outs, strict=True):
        view = TraceView.of(t.query, o.trace)
        m = trace_metrics(view, cfg.filter.rules)
        rows.append({"id": t.id, "query": t.query, "trace": o.trace, "report": view.report,
                     "stop_reason": o.stop_reason, "valid": m["valid"], "tool_calls": m["tool_calls"],
                     "citations": m["citations"], "prompt_tokens": o.usage.prompt_tokens,
                     "completion_tokens": o.usage.completion_tokens, "cost_usd": o.usage.cost_usd})
    return rows


@task(name="reference-reports", cache_policy=NO_CACHE)
async def reference_reports(cfg: Settings, set_name: str, tasks: list[EvalTask], env) -> tuple[dict[str, str], Path]:
    """RACE's reference reports, {task id: report}: generated once by the reference system, then frozen in
    `data/eval/reference/` (versioned with the data tree); tasks already there are never generated again."""
    reference = cfg.evaluate.reference or cfg.model.name
    key = hashlib.sha256(json.dumps([reference, cfg.heldout.model_dump(mode="json"),
                                     cfg.rollout.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()[:12]
    path = cfg.paths.data / "eval" / "reference" / f"{set_name}-{key}.jsonl"
    frozen: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            frozen[row["id"]] = row
    missing = [t for t in tasks if t.id not in frozen]
    if missing:
        for row in await policy_reports(cfg, reference, missing, env):
            frozen[row["id"]] = {"id": row["id"], "query": row["query"], "model": reference, "report": row["report"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in frozen.values()))
        tmp.replace(path)
    return {t.id: frozen[t.id]["report"] for t in tasks}, path


def freeze_queries(cfg: Settings, set_key: str, tasks: list[EvalTask]) -> Path:
    """The exact tasks evaluated, frozen in `data/eval/queries/<set>-<digest>.jsonl`: the evaluation's input
    dataset, versioned with the data tree (a seed file or the project's copy of a benchmark may change later)."""
    from dataclasses import asdict

    from oresearcher.store import atomic_write_text

    body = "".join(json.dumps(asdict(t), ensure_ascii=False, sort_keys=True) + "\n" for t in tasks)
    path = cfg.paths.data / "eval" / "queries" / f"{set_key}-{hashlib.sha256(body.encode()).hexdigest()[:12]}.jsonl"
    if not path.is_file():
        atomic_write_text(path, body)
    return path


def write_results(cfg: Settings, set_key: str, label: str, rows: list[dict], traces: list[str]) -> Path:
    """One model's scored rows (and traces) in `data/eval/results/<set>/<label>.jsonl`: the evaluation's output
    dataset, in the data version the flow records when it ends."""
    from oresearcher.store import atomic_write_text

    path = cfg.paths.data / "eval" / "results" / set_key / f"{label}.jsonl"
    atomic_write_text(path, "".join(json.dumps({**r, "trace": t}, ensure_ascii=False) + "\n"
                                    for r, t in zip(rows, traces, strict=True)))
    return path


@task(name="rubrics", cache_policy=NO_CACHE)
async def rubrics(cfg: Settings, tasks: list[EvalTask], judge) -> dict:
    """Each task's RACE rubric: DeepResearch Bench's official one, or the judge's (asked once per task)."""
    from oresearcher.evaluation import official_rubrics, rubric_for

    official = official_rubrics()
    found = await asyncio.gather(*(rubric_for(t, judge.client, cfg.evaluate, official, cfg.filter.judge.seed)
                                   for t in tasks))
    return dict(zip([t.id for t in tasks], found, strict=True))


@task(name="score-reports", cache_policy=NO_CACHE)
async def score_reports(cfg: Settings, tasks: list[EvalTask], rows: list[dict], references: dict[str, str],
                        rubric_of: dict, judge, env, identity: dict, on_done=None) -> list[dict]:
    """The per-task table of one model: its rollout's numbers, RACE, FACT and key points, and the judge.
    `on_done()` is awaited after each task (progress)."""
    from oresearcher.evaluation import gather_limited, score_task

    async def one(t: EvalTask, r: dict) -> dict:
        row = await score_task(judge.client, env, cfg.evaluate, t, rubric_of[t.id], r["report"],
                               references.get(t.id), cfg.filter.judge.seed)
        if on_done is not None:
            await on_done()
        return row

    scored = await gather_limited([one(t, r) for t, r in zip(tasks, rows, strict=True)],
                                  cfg.filter.judge.concurrency)
    return [{**{k: v for k, v in r.items() if k != "trace"}, **s, "judge": identity}
            for r, s in zip(rows, scored, strict=True)]


@task(name="log-evaluation", cache_policy=NO_CACHE)
def log_evaluation(mlflow, run_id: str, set_name: str, summary: dict[str, float], rows: list[dict],
                   traces: list[str], identity: dict, model: str) -> None:
    """`eval/<set>/<metric>` on the model's run, the per-task table and traces as artifacts, the judge as tags,
    and the run linked from the model version it evaluated (its input datasets: `record_inputs`)."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    mlflow.log_batch(run_id, metrics=[Metric(f"eval/{set_name}/{k}", float(v), now, 0) for k, v in summary.items()],
                     tags=[RunTag(f"judge.{k}", str(v)) for k, v in identity.items()])
    table = {"columns": ["id", "language", "race", "race_target", "race_reference", "valid", "tool_calls",
                         "citations", "fact_pairs", "fact_supported", "fact_unsupported", "kpr", "kpc", "stop_reason",
                         "query"], "data": []}
    for r in rows:
        labels = r["fact_labels"]
        table["data"].append([r["id"], r["language"], r["race"], r["race_target"], r["race_reference"], r["valid"],
                              r["tool_calls"], r["citations"], r["fact_pairs"], labels.count("supported"),
                              labels.count("unsupported"), r.get("kpr"), r.get("kpc"), r["stop_reason"], r["query"]])
    mlflow.log_text(run_id, json.dumps(table, ensure_ascii=False, indent=1), f"eval/{set_name}/tasks.json")
    mlflow.log_text(run_id, "".join(json.dumps({**r, "trace": t}, ensure_ascii=False) + "\n"
                                    for r, t in zip(rows, traces, strict=True)), f"eval/{set_name}/reports.jsonl")
    if model.startswith("models:/"):
        version = model_version(mlflow, model)
        if version is not None:
            mlflow.set_model_version_tag(version.name, version.version, f"eval.{set_name}.run", run_id)
            mlflow.set_tag(run_id, "model_version", f"{version.name}/{version.version}")


@task(name="promote", cache_policy=NO_CACHE)
def promote(cfg: Settings, mlflow, run_id: str, challenger: str, champion: str, decision: dict) -> dict:
    """Move `champion` to the challenger's version when it won; record the decision and its numbers either way, on
    the evaluation run and on the challenger's model version."""
    from mlflow.entities import Metric, RunTag

    version = model_version(mlflow, challenger)
    decision = {**decision, "challenger": challenger, "champion": champion,
                "challenger_version": version.version if version else None}
    if decision["promote"] and version is not None:
        mlflow.set_registered_model_alias(version.name, "champion", version.version)
    decision["summary"] = (f"{'promoted' if decision['promote'] and version else 'kept'}: {challenger} vs "
                           f"{champion}: {decision['reason']}")
    now = __import__("time").time_ns() // 1_000_000
    metrics = [Metric(f"promotion/{k}", float(decision[k]), now, 0) for k in ("difference", "ci_lo", "ci_hi")
               if isinstance(decision.get(k), int | float)]
    mlflow.log_batch(run_id, metrics=metrics, tags=[RunTag("promotion", decision["summary"][:5000]),
                                                    RunTag("promoted", str(bool(decision["promote"])).lower())])
    mlflow.log_text(run_id, json.dumps(decision, indent=1), "promotion.json")
    if version is not None:
        mlflow.set_model_version_tag(version.name, version.version, "promotion", decision["summary"][:5000])
    return decision

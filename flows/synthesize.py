"""Multi-agent synthesis (method.md §1, step 2): each seed → k traces from planner, parallel agents, summarizer.

    oresearcher synthesize --config configs/tiny.yaml [--set synthesis.max_cost_usd=5]

One Prefect task per seed. Output: `data/traces/traces.jsonl`, one record per (seed, candidate) with the trace,
its parsed structure, validation result, tokens, cost, models, timings and failure reason; re-runs skip what
is done. Progress shows as a Prefect progress artifact and a bar on the terminal; the MLflow run carries
`synth/*` metrics and, when `synthesis.mlflow_traces` is on, one MLflow trace per seed with agent, LLM and
tool spans.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.runtime import flow_run

from oresearcher.config import load_config
from tasks.versioning import lineage_card, record_inputs, record_outputs, version_data


@flow(name="synthesize", log_prints=True)
async def synthesize(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from models.llm import Budget, LLMStore, make_client
    from oresearcher import tracing
    from oresearcher.research.environment import ResearchEnvironment
    from oresearcher.seeds import load_seeds, seeds_dir
    from oresearcher.synthesis import SynthesisContext, open_trace_store, pending, run_seeds, traces_path
    from oresearcher.tracking import stage_run
    from tasks.synthesis import dask_runner, dask_task_runner, synthesize_seed

    cfg = load_config(config_path, overrides)
    s = cfg.synthesis
    log = get_run_logger()
    seed_version, seeds = load_seeds(cfg.paths.data)
    seeds = seeds[: s.limit] if s.limit else seeds
    store = open_trace_store(cfg.paths.data)
    todo = pending(seeds, store, s.candidates_per_seed)
    log.info("seed version %s: %d seeds, %d already done, %d to synthesize", seed_version, len(seeds),
             len(seeds) - len(todo), len(todo))

    with stage_run(cfg, "synthesize", tags={"seed_version": seed_version}) as (mlflow, run_id):
        record_inputs(cfg, mlflow, run_id, [(f"seeds-{seed_version}", seeds_dir(cfg.paths.data) / "seeds.jsonl")],
                      "synthesis")
        if s.mlflow_traces:
            tracing.enable_tracing(cfg.mlflow.resolved_uri(), mlflow.get_run(run_id).info.experiment_id, run_id)
        llm_store = LLMStore(cfg.paths.data / "llm.sqlite")
        client = make_client(s.teacher, key="synthesis.teacher", store=llm_store, budget=Budget(s.max_cost_usd, s.max_tokens),
                             run=str(flow_run.get_id() or run_id), cache_dir=cfg.paths.cache)
        ctx = SynthesisContext(cfg, client, ResearchEnvironment.from_config(cfg), store, seed_version)
        artifact = await acreate_progress_artifact(0.0, key="synthesis-progress", description="seeds synthesized")
        bar = tqdm(total=len(todo), desc="synthesize", unit="seed")
        done = {"n": 0}
        ordered = asyncio.Lock()  # seeds finishing together must not land their updates out of order

        async def on_done(outcome) -> None:
            async with ordered:
                done["n"] += 1
                bar.update(1)
                await aupdate_progress_artifact(artifact, 100.0 * done["n"] / max(1, len(todo)))

        try:
            if s.task_runner == "dask":  # each seed a task on a Dask cluster, its worker's own clients
                with dask_task_runner(cfg) as cluster:
                    outcomes = await run_seeds(todo, ctx, dask_runner(cfg, config_path, overrides or [], seed_version,
                                                                      str(flow_run.get_id() or run_id), cluster),
                                               on_done)
            else:
                outcomes = await run_seeds(todo, ctx, synthesize_seed.with_options(retries=s.seed_retries), on_done)
        finally:
            bar.close()
            await client.aclose()
            tracing.disable_tracing()
        metrics = _metrics(store, seeds, ctx.client.model_id)
        for key, value in metrics.items():
            mlflow.log_metric(run_id, f"synth/{key}", value)
        status = "budget_spent" if any(o.stopped == "budget_spent" for o in outcomes) else \
            "tape_miss" if any(o.stopped == "tape_miss" for o in outcomes) else "complete"
        data_version = version_data(cfg)
        mlflow.set_tag(run_id, "status", status)
        mlflow.set_tag(run_id, "data_version", str(data_version))
        record_outputs(cfg, mlflow, run_id, [traces_path(cfg.paths.data)], data_version)
        lineage_card(mlflow, run_id, f"Traces of seed version {seed_version}")
        mlflow.set_tag(run_id, "teacher", ctx.client.model_id)
    log.info("synthesis %s: %s", status, metrics)
    return {"status": status, "data_version": data_version, **metrics}


def _metrics(store, seeds, teacher: str) -> dict[str, float]:
    """Totals over this seed set's records (a re-run reports the whole set, not just its own share)."""
    ids = {s.id for s in seeds}
    records = [r for r in store.latest() if r["seed_id"] in ids]
    n = len(records)
    ok = [r for r in records if r["failure"] is None]
    return {
        "traces": float(n), "failures": float(n - len(ok)),
        "retryable_failures": float(sum(bool(r.get("retryable")) for r in records)), "valid": float(sum(r["valid"] for r in records)),
        "valid_rate": sum(r["valid"] for r in records) / n if n else 0.0,
        "prompt_tokens": float(sum(r["usage"]["prompt_tokens"] for r in records)),
        "completion_tokens": float(sum(r["usage"]["completion_tokens"] for r in records)),
        "cost_usd": sum(r["usage"]["cost_usd"] for r in records),
        "llm_calls": float(sum(r["usage"]["calls"] for r in records)),
        "cache_hits": float(sum(r["usage"]["cache_hits"] for r in records)),
        "tool_calls_per_trace": sum(sum(st["tool_calls"] for st in r["structure"]["subtasks"]) for r in ok)
        / max(1, len(ok)),
        "seconds_per_trace": sum(r["timings"].get("total_s", 0) for r in ok) / max(1, len(ok)),
    }

"""The measured effect (roadmap stage 3): base, SFT and GRPO models on the held-out split, unguided, side by side.

    oresearcher heldout --config configs/tiny.yaml [--model models:/o-researcher-policy/4 ...]

Each model gets an MLflow run (`heldout-<label>`) with `heldout/*` means (format validity, tool calls, citations,
share of references an observation showed, R_base, mean reward R) and its traces; the flow prints the table and
leaves it as a Prefect artifact. By default: the base model and the newest SFT and GRPO versions.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from oresearcher.config import load_config
from tasks.heldout import heldout_models, local_model, log_heldout, run_heldout


@flow(name="heldout", log_prints=True)
async def heldout(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None,
                  models: list[str] | None = None, labels: list[str] | None = None) -> dict:
    from prefect.artifacts import create_table_artifact

    from oresearcher.heldout import COLUMNS, means, table
    from oresearcher.judge import make_judge
    from oresearcher.seeds import heldout_queries
    from oresearcher.tracking import client as tracking_client
    from oresearcher.tracking import log_file_input, stage_run

    cfg = load_config(config_path, overrides)
    queries = heldout_queries(cfg.ingest)[: cfg.heldout.limit]
    mlflow = tracking_client(cfg)
    candidates = list(zip(labels or models, models, strict=True)) if models else heldout_models(cfg, mlflow)
    # every model fetched before any runs: a version missing from the registry is one error up front, not a failed
    # run after the others' rollouts
    folders = [local_model(cfg, model) for _, model in candidates]
    judge = make_judge(cfg, run="heldout")
    results: dict[str, dict[str, float]] = {}
    sample = None  # the last model's first trace: what the newest policy writes, shown by `oresearcher run`
    try:
        for (label, model), folder in zip(candidates, folders, strict=True):
            with stage_run(cfg, f"heldout-{label}", tags={"model": model, "heldout_queries": str(len(queries))}) \
                    as (client, run_id):
                log_file_input(client, run_id, cfg.paths.resolve(cfg.ingest.heldout_seeds), context="evaluation")
                rows = await run_heldout(cfg, folder, queries, judge)
                results[label] = means(rows)
                sample = {"model": model, "trace": rows[0]["trace"], "stop_reason": rows[0]["stop_reason"],
                          "valid": bool(rows[0]["metrics"]["valid"])} if rows else sample
                log_heldout(client, run_id, rows, results[label])
    finally:
        await judge.client.aclose()
    text = table(results, len(queries))
    get_run_logger().info("%s", text)
    await create_table_artifact(key="heldout", description=text.splitlines()[0], table=[
        {"model": label, **{title: round(m.get(k, 0.0), 3) for k, title in COLUMNS}} for label, m in results.items()])
    return {"models": dict(candidates), "results": results, "table": text, "queries": len(queries), "sample": sample}

"""Three-tier filtering (method.md §4): rules, LLM judge, human spot-check; only what passes all three trains.

    oresearcher filter --config configs/tiny.yaml [--set review.required=true]

Output: a filtered dataset version `data/filtered/<version>/` (kept traces, every verdict, the report, the review
gate), versioned with DVC; the report as a Prefect table artifact and MLflow artifacts, with `filter/*` metrics.
With `review.required` the flow waits for the sampled traces' verdicts (`oresearcher review` serves the page),
then accepts the batch or blocks it from training by its sampled rejection rate; without, it proceeds and marks
the version `unreviewed`. A version whose gate was decided keeps that decision on a re-run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from oresearcher.config import load_config
from tasks.filtering import (
    decide_gate,
    filter_by_rules,
    judge_traces,
    load_traces,
    policy_token_counter,
    publish_filter_report,
    queue_for_review,
    wait_for_review,
)
from tasks.versioning import lineage_card, record_inputs, record_outputs, version_data


@flow(name="filter", log_prints=True)
async def filter_traces(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None) -> dict:
    from oresearcher import filtering as f
    from oresearcher.synthesis import traces_path
    from oresearcher.tracking import stage_run

    cfg = load_config(config_path, overrides)
    log = get_run_logger()
    seed_version, records, topics = load_traces(cfg)
    with stage_run(cfg, "filter", tags={"seed_version": seed_version}) as (mlflow, run_id):
        record_inputs(cfg, mlflow, run_id, [(f"traces-{seed_version}", traces_path(cfg.paths.data))], "filtering")
        verdicts = filter_by_rules(records, topics, cfg, policy_token_counter(cfg))           # tier 1
        judged = await judge_traces(records, verdicts, cfg, str(flow_run.get_id() or run_id))  # tier 2
        version = f.version_id([r["id"] for r in records], cfg.filter.model_dump(mode="json"), judged["identity"],
                               verdicts)
        report = {"version": version, "seed_version": seed_version,
                  **f.filter_report(verdicts, judged["identity"], judged["cost"])}
        f.write_version(cfg.paths.data, version, records, verdicts)
        gate = f.read_gate(cfg.paths.data, version) or {}
        if gate.get("status") not in ("accepted", "blocked"):                                   # tier 3
            sampled = queue_for_review(version, records, verdicts, cfg)
            if cfg.review.required:
                f.write_gate(cfg.paths.data, version, {"status": "pending_review", "sampled": sampled,
                                                       "reason": "waiting for the reviewers' verdicts"})
            reviewed_all = await wait_for_review(version, cfg) if cfg.review.required else None
            gate = decide_gate(version, sampled, reviewed_all, cfg)
            f.write_gate(cfg.paths.data, version, gate)
        report["gate"] = gate
        f.write_report(cfg.paths.data, version, report)
        summary = publish_filter_report(report, mlflow, run_id)
        data_version = version_data(cfg)
        for key, value in {"filtered_version": version, "gate": gate["status"],
                           "data_version": str(data_version)}.items():
            mlflow.set_tag(run_id, key, value)
        record_outputs(cfg, mlflow, run_id, [cfg.paths.data / "filtered" / version], data_version)
        lineage_card(mlflow, run_id, f"Filtered version {version}")
    log.info("filtered version %s: %s", version, summary)
    if gate["status"] == "blocked":
        log.warning("batch %s is blocked from training: %s", version, gate["reason"])
    return {"version": version, "gate": gate["status"], "gate_reason": gate["reason"], "summary": summary,
            "counts": report["counts"], "rules": report["rules"], "judge": report["judge"],
            "data_version": data_version}

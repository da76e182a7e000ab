"""Agentic GRPO (method.md §1 step 5, §3): the SFT'd policy researches for real and learns from its own rollouts.

    oresearcher grpo --config configs/tiny.yaml [--from models:/o-researcher-policy/3]

Starts from a registered SFT version (default: the newest), samples `grpo.num_generations` rollouts per seed query
(the held-out split excluded) through the policy runtime and the research environment, scores each with
R = 0.6·R_base + 0.2·R_tool + 0.2·R_format, and updates the policy with TRL's `GRPOTrainer`. The MLflow run holds
each step's reward terms, format pass rate and tool-call distribution (`train/*`) and the guard's decision
(`grpo/guard.json`); the kept checkpoint is registered as a new version with the alias `challenger`. A killed run
resumes from its last checkpoint (`paths.checkpoints/grpo-v<start>-<settings>/`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from oresearcher.config import load_config
from tasks.training import register_challenger, reinforce, resolve_start, training_queries
from tasks.versioning import record_inputs


@flow(name="grpo", log_prints=True)
def grpo(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None,
         start_from: str | None = None) -> dict:
    from oresearcher.grpo import summary
    from oresearcher.seeds import seeds_dir
    from oresearcher.tracking import stage_run

    cfg = load_config(config_path, overrides)
    seed_version, queries = training_queries(cfg)
    with stage_run(cfg, "grpo", tags={"seed_version": seed_version}) as (mlflow, run_id):
        record_inputs(cfg, mlflow, run_id, [(f"seeds-{seed_version}", seeds_dir(cfg.paths.data) / "seeds.jsonl")],
                      "training")  # the queries its rollouts research
        start_uri, start_version, start_dir = resolve_start(cfg, mlflow, start_from)
        mlflow.set_tag(run_id, "start_from", start_uri)
        trained = reinforce(cfg, config_path, overrides or [], start_dir, start_version, queries, mlflow, run_id)
        mlflow.log_dict(run_id, {**trained["guard"], "kept_step": trained["kept_step"]}, "grpo/guard.json")
        mlflow.set_tag(run_id, "guard", trained["guard"].get("reason", "no guard tripped"))
        model_version = None
        if trained["model_dir"]:
            model_version = register_challenger(cfg, mlflow, run_id, trained["model_dir"], "grpo",
                                                {"start_from": start_uri, "seed_version": seed_version,
                                                 "lora": cfg.grpo.lora, "steps": trained["steps"]})
    log = get_run_logger()
    s = summary(trained["history"])
    log.info("GRPO from %s: %d steps, reward %.3f -> %.3f, format %.2f -> %.2f; %s", start_uri, trained["steps"],
             s.get("reward_first", 0), s.get("reward_last", 0), s.get("format_first", 0), s.get("format_last", 0),
             f"registered version {model_version} (@challenger)" if model_version else
             "nothing registered: " + trained["guard"]["reason"] + " before any good checkpoint")
    if trained["guard"]["stopped"]:
        log.warning("guard: %s; kept the checkpoint of step %s", trained["guard"]["reason"], trained["kept_step"])
    return {"start_from": start_uri, "model_version": model_version, "run_id": run_id, "summary": s,
            **{k: trained[k] for k in ("guard", "kept_step", "steps", "resumed_from", "history")}}

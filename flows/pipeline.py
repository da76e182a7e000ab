"""The whole recipe on one config: `oresearcher run --config configs/tiny.yaml` (what `make run` calls).

Stages, as in the paper (method.md §1): seed ingestion → multi-agent synthesis → three-tier filtering → SFT →
GRPO → evaluation. Stages join this flow as they land; today: ready the research environment (model, search
index), ingest the default seeds, synthesize traces, filter them, fine-tune the policy on them, reinforce it in the
research environment, run base, SFT and GRPO models on the held-out split, and evaluate them there (RACE, FACT,
intervals; the GRPO version is promoted to champion when it wins). Each stage logs its own MLflow run;
data stages record a DVC version, training stages register model versions.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.evaluate import evaluate
from flows.filter import filter_traces
from flows.grpo import grpo
from flows.heldout import heldout
from flows.ingest import ingest
from flows.sft import sft
from flows.synthesize import synthesize
from oresearcher.config import load_config
from oresearcher.tracking import parent_run
from tasks.environment import build_search_index, prepare_model


def lineage(seeds: dict, traces: dict, filtered: dict, tuned: dict, reinforced: dict, evaluated: dict) -> dict:
    """What this invocation made, in order, each with the version that names it: seeds → traces → filtered →
    SFT → GRPO → evaluation (the pipeline run's `lineage.json`)."""
    return {"seeds": {"seed_version": seeds["seed_version"], "data_version": seeds["data_version"]},
            "traces": {"data_version": traces.get("data_version"), "status": traces.get("status")},
            "filtered": {"version": filtered["version"], "gate": filtered["gate"],
                         "data_version": filtered["data_version"]},
            "sft": {"model_version": tuned["model_version"], "run_id": tuned.get("run_id")},
            "grpo": {"model_version": reinforced["model_version"], "run_id": reinforced["run_id"],
                     "start_from": reinforced["start_from"]},
            "evaluation": {"run_id": evaluated["run_id"], "data_version": evaluated["data_version"],
                           "decision": (evaluated["decision"] or {}).get("summary"), "judge": evaluated["judge"]}}


@flow(name="pipeline", log_prints=True)
async def pipeline(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None,
                   seed_files: list[str] | None = None) -> dict:
    cfg = load_config(config_path, overrides)
    # one MLflow run for this invocation; every stage's run is its child (the runs table groups them)
    with parent_run(cfg, "pipeline") as (mlflow, run_id):
        model_dir = prepare_model(cfg)
        index = build_search_index(cfg)
        seeds = ingest(paths=seed_files or [str(cfg.paths.resolve(cfg.ingest.default_seeds))],
                       config_path=config_path, overrides=overrides)
        traces = await synthesize(config_path=config_path, overrides=overrides)
        filtered = await filter_traces(config_path=config_path, overrides=overrides)
        log = get_run_logger()
        log.info("model %s | index %s | seeds %s | traces %s", model_dir, index, seeds["counts"], traces)
        log.info("filter: %s (%s)", filtered["summary"], filtered["gate_reason"])
        tuned = sft(config_path=config_path, overrides=overrides, dataset_version=filtered["version"])
        reinforced = grpo(config_path=config_path, overrides=overrides,
                          start_from=f"models:/{cfg.registry.policy_name}/{tuned['model_version']}")
        models = [cfg.model.name, f"models:/{cfg.registry.policy_name}/{tuned['model_version']}"]
        if reinforced["model_version"]:  # loaded back the way a user would: through the alias GRPO just moved
            models.append(f"models:/{cfg.registry.policy_name}@challenger")
        labels = ["base", "sft", "grpo"][: len(models)]
        compared = await heldout(config_path=config_path, overrides=overrides, models=models, labels=labels)
        # the same rollouts (the response cache answers them), now scored as the field scores them; the GRPO version
        # (@challenger) takes the champion alias if it beats the champion (or, before there is one, the base model)
        evaluated = await evaluate(config_path=config_path, overrides=overrides, models=models, labels=labels,
                                   queries="heldout", limit=cfg.heldout.limit)
        mlflow.log_dict(run_id, lineage(seeds, traces, filtered, tuned, reinforced, evaluated), "lineage.json")
    return {"model_dir": model_dir, "index": index, "seeds": seeds, "synthesis": traces, "filter": filtered,
            "sft": tuned, "grpo": reinforced, "heldout": compared, "evaluation": evaluated}

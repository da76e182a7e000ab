"""Supervised fine-tuning (method.md §1, step 4): the policy learns the traces that passed all three filters.

    oresearcher sft --config configs/tiny.yaml [--set sft.max_steps=20]

Reads the latest accepted filtered dataset version (`filtering.training_set`: a blocked version, or one waiting
for review, is a one-line error), trains with TRL's `SFTTrainer` (LoRA by default) with the observations masked out
of the loss, and registers the result in the MLflow Model Registry as a new version of `policy` with the alias
`challenger`. The MLflow run holds `train/*` metrics, the dataset version as its input, and the checkpoint. A run
that is killed resumes from its last checkpoint (`paths.checkpoints/sft-<dataset>-<settings>/`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from oresearcher.config import load_config
from tasks.training import fine_tune, read_training_set, register_challenger
from tasks.versioning import record_inputs


@flow(name="sft", log_prints=True)
def sft(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None,
        dataset_version: str | None = None) -> dict:
    from oresearcher.tracking import stage_run

    cfg = load_config(config_path, overrides)
    version, records = read_training_set(cfg, dataset_version)
    with stage_run(cfg, "sft", tags={"dataset_version": version}) as (mlflow, run_id):
        record_inputs(cfg, mlflow, run_id, [(f"filtered-{version}", cfg.paths.data / "filtered" / version)])
        trained = fine_tune(cfg, config_path, overrides or [], version, records, mlflow, run_id)
        model_version = register_challenger(cfg, mlflow, run_id, trained["model_dir"], "sft",
                                            {"dataset_version": version, "lora": cfg.sft.lora})
    get_run_logger().info("SFT on %d traces of %s: loss %.3f -> %.3f; registered %s version %s (@challenger)",
                          len(records), version, trained["losses"][0], trained["losses"][-1], cfg.registry.policy_name,
                          model_version)
    return {"dataset_version": version, "model_version": model_version, "run_id": run_id,
            **{k: trained[k] for k in ("losses", "steps", "resumed_from", "samples")}}

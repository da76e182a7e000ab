"""Tasks of the training flows: the dataset they may read, the trainer, the registry."""

from __future__ import annotations

import hashlib
import json

from prefect import task
from prefect.cache_policies import NO_CACHE

from oresearcher.config import Settings


@task(name="read-training-set", cache_policy=NO_CACHE)
def read_training_set(cfg: Settings, version: str | None) -> tuple[str, list[dict]]:
    """The accepted (or unreviewed) filtered version's traces; refuses a blocked or pending one."""
    from oresearcher.filtering import training_set

    version, records, _gate = training_set(cfg.paths.data, version)
    return version, records


def checkpoint_dir(cfg: Settings, stage: str, dataset_version: str):
    """One folder per (stage, dataset, settings, base model): a re-run of the same resumes, a changed one starts
    fresh."""
    key = json.dumps([cfg.model.name, cfg.sft.model_dump(mode="json"), cfg.train.model_dump(mode="json")],
                     sort_keys=True)
    return cfg.paths.checkpoints / f"{stage}-{dataset_version}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@task(name="fine-tune", cache_policy=NO_CACHE)
def fine_tune(cfg: Settings, config_path: str, overrides: list[str], dataset_version: str, records: list[dict],
              mlflow, run_id: str) -> dict:
    """SFT with `train/*` metrics on the stage's MLflow run: in this process, or launched across processes."""
    from oresearcher.registry import MlflowMetrics
    from oresearcher.sft import run_sft

    return run_sft(cfg, config_path, overrides, dataset_version, records,
                   checkpoint_dir(cfg, "sft", dataset_version), [MlflowMetrics(mlflow, run_id)], run_id)


@task(name="register-challenger", cache_policy=NO_CACHE)
def register_challenger(cfg: Settings, mlflow, run_id: str, trained: dict, dataset_version: str) -> str:
    """The checkpoint as a new registered version of the policy, alias `challenger`."""
    from oresearcher.registry import register_model

    return register_model(mlflow, run_id, cfg.registry.policy_name, trained["model_dir"], alias="challenger",
                          tags={"stage": "sft", "dataset_version": dataset_version, "base_model": cfg.model.name,
                                "lora": cfg.sft.lora, "run_id": run_id})

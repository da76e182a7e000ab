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


# The training tasks do not log prints: `datasets` fingerprints functions through dill, which reads their bytecode by
# capturing what `dis.dis` prints; under Prefect's print capture that listing went to the run's logs instead.
@task(name="fine-tune", cache_policy=NO_CACHE, log_prints=False)
def fine_tune(cfg: Settings, config_path: str, overrides: list[str], dataset_version: str, records: list[dict],
              mlflow, run_id: str) -> dict:
    """SFT with `train/*` metrics on the stage's MLflow run: in this process, or launched across processes."""
    from oresearcher.sft import run_sft
    from oresearcher.train_metrics import MlflowMetrics

    return run_sft(cfg, config_path, overrides, dataset_version, records,
                   checkpoint_dir(cfg, "sft", dataset_version), [MlflowMetrics(mlflow, run_id)], run_id)


@task(name="register-challenger", cache_policy=NO_CACHE)
def register_challenger(cfg: Settings, mlflow, run_id: str, model_dir: str, stage: str, tags: dict) -> str:
    """The checkpoint as a new registered version of the policy, alias `challenger`; its lineage card (the data
    and runs it came from, `oresearcher.lineage`) becomes the version's description in the registry."""
    from oresearcher.registry import register_model
    from tasks.versioning import lineage_card

    name = cfg.registry.policy_name
    version = register_model(mlflow, run_id, name, model_dir, alias="challenger",
                             tags={"stage": stage, "base_model": cfg.model.name, "run_id": run_id, **tags})
    card = lineage_card.fn(mlflow, run_id, f"{name} version {version} ({stage})")
    mlflow.update_model_version(name, version, description=card)
    return version


# ------------------------------------------------------------------------------------------------------- GRPO

@task(name="resolve-start-version", cache_policy=NO_CACHE)
def resolve_start(cfg: Settings, mlflow, start_from: str | None) -> tuple[str, str, str]:
    """(models:/ URI, version, local folder) of the version GRPO starts from: `start_from`, or the newest version
    the sft stage registered."""
    from oresearcher.registry import download_model

    name = cfg.registry.policy_name
    uri = start_from or cfg.grpo.start_from
    if uri:
        version = _version_of(mlflow, name, uri)
    else:
        try:
            versions = mlflow.search_model_versions(f"name = '{name}' and tags.stage = 'sft'")
        except Exception:  # noqa: BLE001 - MLflow raises its own exception when the name is unknown
            versions = []
        if not versions:
            from oresearcher.registry import StartNotFound

            raise StartNotFound(f"no SFT version of {name} in the registry: run `oresearcher sft` first, or set "
                                "grpo.start_from")
        version = str(max(int(v.version) for v in versions))
        uri = f"models:/{name}/{version}"
    local = registry_dir(cfg, version)
    if not local.is_dir():
        download_model(uri, cfg.mlflow.resolved_uri(), local)
    return uri, version, str(local)


def registry_dir(cfg: Settings, version: str):
    """Where a registered version of the policy is downloaded to (once)."""
    return cfg.paths.checkpoints / "registry" / f"{cfg.registry.policy_name}-v{version}"


def _version_of(mlflow, name: str, uri: str) -> str:
    from oresearcher.registry import StartNotFound, model_version

    ref = uri.removeprefix(f"models:/{name}")
    if not (ref.startswith("@") or (ref.startswith("/") and ref[1:].isdigit())):
        raise StartNotFound(f"grpo.start_from: {uri} is not models:/{name}/<version> or models:/{name}@<alias>")
    if (version := model_version(mlflow, uri)) is None:
        raise StartNotFound(f"grpo.start_from: {uri} is not in the registry")
    return version.version


@task(name="training-queries", cache_policy=NO_CACHE)
def training_queries(cfg: Settings) -> tuple[str, list[str]]:
    """(seed version, queries) GRPO samples from: the current seed set, without the held-out split."""
    from oresearcher.seeds import heldout_queries, load_seeds, normalize

    version, seeds = load_seeds(cfg.paths.data)
    held = set(heldout_queries(cfg.ingest))
    return version, [s.query for s in seeds if normalize(s.query) not in held]


def grpo_checkpoint_dir(cfg: Settings, start_version: str):
    key = json.dumps([cfg.model.name, cfg.grpo.model_dump(mode="json"), cfg.rollout.model_dump(mode="json"),
                      cfg.train.model_dump(mode="json")], sort_keys=True)
    return cfg.paths.checkpoints / f"grpo-v{start_version}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@task(name="reinforce", cache_policy=NO_CACHE, log_prints=False)
def reinforce(cfg: Settings, config_path: str, overrides: list[str], start_dir: str, start_version: str,
              queries: list[str], mlflow, run_id: str) -> dict:
    """GRPO with `train/*` metrics (reward terms, format rate, tool calls) on the stage's MLflow run: in this
    process, or launched across processes."""
    from oresearcher.grpo import run_grpo
    from oresearcher.train_metrics import MlflowMetrics

    return run_grpo(cfg, config_path, overrides, start_dir, queries, grpo_checkpoint_dir(cfg, start_version),
                    [MlflowMetrics(mlflow, run_id)], run_id)

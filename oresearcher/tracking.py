"""MLflow for every stage: one experiment per config, metrics namespaced by stage (`synth/...`, `env/...`).

The active MLflow run is thread-local and Prefect runs tasks in threads, so stages pass `run_id` explicitly
and log through an `MlflowClient` rather than the fluent API.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

from oresearcher.config import REPO_ROOT, Settings, flat_params


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def artifact_location(cfg: Settings) -> str | None:
    """Artifacts beside a SQLite tracking database (`mlartifacts/`), not in whatever directory a run starts in."""
    uri = cfg.mlflow.resolved_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None  # a tracking server decides


def client(cfg: Settings):
    """The MLflow client of this config, its model registry pinned to the same store: without `registry_uri`,
    MLflow takes the registry from MLFLOW_REGISTRY_URI, which `mlflow.set_registry_uri` (a download, another
    config in the same process) leaves in the environment of every process started after it."""
    from mlflow.tracking import MlflowClient

    uri = cfg.mlflow.resolved_uri()
    return MlflowClient(uri, registry_uri=uri)


@contextmanager
def stage_run(cfg: Settings, stage: str, tags: dict[str, str] | None = None):
    """Start an MLflow run for `stage` with the config as params; yields (client, run_id)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.resolved_uri())
    mlflow_client = client(cfg)
    exp = mlflow_client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else mlflow_client.create_experiment(
        cfg.mlflow.experiment, artifact_location=artifact_location(cfg))
    run = mlflow_client.create_run(exp_id, run_name=stage, tags={"stage": stage, "config": cfg.name,
                                                                 "git_commit": git_commit(), **(tags or {})})
    run_id = run.info.run_id
    params = flat_params(cfg)
    for start in range(0, len(params), 100):  # MLflow caps a batch at 100 params
        chunk = list(params.items())[start : start + 100]
        mlflow_client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in chunk])
    status = "FAILED"
    try:
        yield mlflow_client, run_id
        status = "FINISHED"
    finally:
        mlflow_client.set_terminated(run_id, status)

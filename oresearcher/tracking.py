"""MLflow for every stage: one experiment per config, metrics namespaced by stage (`synth/...`, `env/...`).

The active MLflow run is thread-local and Prefect runs tasks in threads, so stages pass `run_id` explicitly
and log through an `MlflowClient` rather than the fluent API.
"""

from __future__ import annotations

import contextvars
import os
import socket
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
    import logging

    from mlflow.tracking import MlflowClient

    # a new SQLite store logs "Creating initial MLflow database tables" at INFO: noise before a CLI's one-line answer
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = cfg.mlflow.resolved_uri()
    return MlflowClient(uri, registry_uri=uri)


# The pipeline's own MLflow run, while it runs: each stage's run becomes its child (Prefect runs subflows in the
# caller's context, so the stages see it).
_PARENT_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlflow_parent_run", default=None)


@contextmanager
def parent_run(cfg: Settings, name: str, tags: dict[str, str] | None = None):
    """A run that the stage runs started inside it nest under (MLflow's parent/child runs); yields its id."""
    with stage_run(cfg, name, tags=tags) as (client, run_id):
        token = _PARENT_RUN.set(run_id)
        try:
            yield client, run_id
        finally:
            _PARENT_RUN.reset(token)


def log_file_input(client, run_id: str, path: Path, context: str) -> None:
    """A file the run read, as an MLflow dataset input named after it, its digest the file's sha256."""
    import hashlib

    from oresearcher.registry import log_dataset_input

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if Path(path).is_file() else "missing"
    log_dataset_input(client, run_id, Path(path).name, digest, str(Path(path).resolve()), context=context)


def owner_tags() -> dict[str, str]:
    """The process that owns a run: how the next start tells a crashed stage's run from a live one."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def mark_dead_runs_killed(client, exp_id: str) -> list[str]:
    """Runs left RUNNING by a stage that died (SIGKILL, a lost machine: no `finally` ran) are KILLED now: those
    whose owner process, on this host, is gone. Runs of live processes, and of other hosts, are left alone."""
    host, killed = socket.gethostname(), []
    for run in client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit():
            continue
        try:
            os.kill(int(tags["pid"]), 0)
            continue  # alive (or another user's: not ours to judge)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        client.set_tag(run.info.run_id, "killed_reason", f"its process {tags['pid']} on {host} was gone at the "
                                                          f"next start")
        client.set_terminated(run.info.run_id, "KILLED")
        killed.append(run.info.run_id)
    return killed


def prefect_tags() -> dict[str, str]:
    """The Prefect flow run a stage runs in (id and UI address), when it runs in one."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return {}
    return {"prefect.flow_run_id": str(run_id), "prefect.flow_run_url": str(flow_run.get_flow_run_ui_url() or "")}


def link_from_prefect(cfg: Settings, stage: str, exp_id: str, run_id: str) -> None:
    """A link artifact on the Prefect flow run to its MLflow run (in the MLflow UI at `mlflow.ui_url`)."""
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    if flow_run.get_id():
        create_link_artifact(f"{cfg.mlflow.ui_url.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}",
                             link_text=f"MLflow run {stage}", description=f"the MLflow run of {stage}",
                             _sync=True)  # the sync client: stages open runs from sync and async flows alike


@contextmanager
def stage_run(cfg: Settings, stage: str, tags: dict[str, str] | None = None):
    """Start an MLflow run for `stage` with the config as params; yields (client, run_id)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.resolved_uri())
    mlflow_client = client(cfg)
    exp = mlflow_client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else mlflow_client.create_experiment(
        cfg.mlflow.experiment, artifact_location=artifact_location(cfg))
    mark_dead_runs_killed(mlflow_client, exp_id)
    parent = {"mlflow.parentRunId": _PARENT_RUN.get()} if _PARENT_RUN.get() else {}
    run = mlflow_client.create_run(exp_id, run_name=stage, tags={"stage": stage, "config": cfg.name,
                                                                 "git_commit": git_commit(), **owner_tags(),
                                                                 **prefect_tags(), **parent, **(tags or {})})
    run_id = run.info.run_id
    link_from_prefect(cfg, stage, exp_id, run_id)
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

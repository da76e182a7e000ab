"""Checkpoints in the MLflow Model Registry, and the dataset inputs of training runs (their metrics:
`oresearcher.train_metrics`).

    version = register_model(client, run_id, "o-researcher-policy", model_dir, alias="challenger", tags={...})
    local_dir = download_model("models:/o-researcher-policy@challenger", tracking_uri)

A registered version is the checkpoint folder logged as the run's `model` artifacts (LoRA adapters with their
`adapter_config.json`, or full weights), so any machine with the tracking server's artifacts can load it back.
"""

from __future__ import annotations

import warnings
from pathlib import Path


class StartNotFound(LookupError):
    """The registered version a stage should start from is not in the registry."""


def log_dataset_input(client, run_id: str, name: str, digest: str, source: str, context: str = "training",
                      tags: dict[str, str] | None = None) -> None:
    """The dataset a run read, as an MLflow dataset input: name, digest (its version), where it lives, and `tags`
    on the input (for a dataset in the data tree: the DVC version and path `oresearcher restore` pulls)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # MLflow registers its local-file source class twice, then warns it is ambiguous
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        resolved = resolve_dataset_source(source)
    dataset = MetaDataset(resolved, name=name, digest=digest)
    input_tags = [InputTag("mlflow.data.context", context), *(InputTag(k, v) for k, v in (tags or {}).items())]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), input_tags)])


def register_model(client, run_id: str, name: str, model_dir: str | Path, alias: str, tags: dict[str, str]) -> str:
    """Log `model_dir` as the run's `model` artifacts, register it as a new version of `name` and point `alias`
    at it. Returns the version number."""
    from mlflow.exceptions import MlflowException

    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "already exists" not in str(e).lower() and e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
    version = client.create_model_version(name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    client.set_registered_model_alias(name, alias, version.version)
    return version.version


def model_version(client, uri: str):
    """The registered version `models:/name/N`, `models:/name@alias` (or either without `models:/`) names now;
    None if the registry has none."""
    from mlflow.exceptions import MlflowException

    name, sep, alias = uri.removeprefix("models:/").partition("@")
    try:
        if sep:
            return client.get_model_version_by_alias(name, alias)
        name, _, number = name.rpartition("/")
        return client.get_model_version(name, number) if name and number.isdigit() else None
    except MlflowException:
        return None


def require_version(client, uri: str, tracking_uri: str):
    """`model_version`, or `StartNotFound` naming the URI and the registry (a one-line user error in the CLI)."""
    if (version := model_version(client, uri)) is None:
        raise StartNotFound(f"{uri} is not in the registry at {tracking_uri}")
    return version


def download_model(uri: str, tracking_uri: str, dst: Path | None = None) -> str:
    """A local copy of a registered model (`models:/name@alias` or `models:/name/3`): the `model` artifacts of the
    run that registered it. Resolved with a client pinned to `tracking_uri` rather than MLflow's global registry
    URI, which would outlive this call in the environment of every process started later."""
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    version = require_version(client, uri, tracking_uri)
    if dst is None:
        return client.download_artifacts(version.run_id, "model", tempfile.mkdtemp(prefix="model-"))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:  # the folder appears whole or not at all
        shutil.move(client.download_artifacts(version.run_id, "model", tmp), dst)
    return str(dst)

"""The `sft` flow on the tiny random-init model: reads an accepted filtered version, trains, logs `train/*` and
the dataset input, registers `@challenger`, which loads back; a blocked version is refused."""

from __future__ import annotations

import pytest
from traces import write_filtered_version

from oresearcher import filtering as f

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_sft_flow_trains_logs_and_registers_a_challenger(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.sft import sft
    from models.tiny import build_tiny_model
    from oresearcher.registry import download_model

    data, uri = tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_filtered_version(data, "unreviewed")
    version = "v1"
    overrides = [f"paths.data_dir={data}", f"paths.checkpoints_dir={tmp_path / 'ckpt'}", f"mlflow.tracking_uri={uri}",
                 f"model.name={build_tiny_model()}", "sft.max_steps=4", "sft.learning_rate=0.01"]
    result = sft(config_path=str(REPO / "configs" / "tiny.yaml"), overrides=overrides)
    assert result["dataset_version"] == version and result["steps"] == 4
    client = MlflowClient(uri)
    mv = client.get_model_version_by_alias("o-researcher-policy", "challenger")
    assert mv.version == result["model_version"] and mv.run_id == result["run_id"]
    assert mv.tags["dataset_version"] == version and mv.tags["stage"] == "sft"
    run = client.get_run(result["run_id"])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]  # the filtered version, by its content digest
    assert dataset.name == f"filtered-{version}" and len(dataset.digest) == 32
    assert mv.description.startswith(f"# o-researcher-policy version {mv.version} (sft)")  # its lineage card
    assert f"read filtered-{version}: `filtered/{version}` @ `{dataset.digest}`" in mv.description
    local = download_model("models:/o-researcher-policy@challenger", uri, tmp_path / "dl")
    assert (__import__("pathlib").Path(local) / "adapter_config.json").is_file()


@pytest.mark.slow
def test_sft_refuses_a_blocked_version(prefect_server, tmp_path):
    from flows.sft import sft

    data = tmp_path / "data"
    write_filtered_version(data, "blocked")
    with pytest.raises(f.DatasetError, match="blocked from training"):
        sft(config_path=str(REPO / "configs" / "tiny.yaml"),
            overrides=[f"paths.data_dir={data}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])

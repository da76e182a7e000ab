"""The training stages end to end on the tiny random-init model, in a temporary MLflow: `sft` registers a version,
`grpo` starts from it and registers another (@challenger) with every reward term and the guard's decision logged,
and `heldout` runs base, SFT and GRPO on the held-out split, logging `heldout/*` per model and printing the table."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from traces import write_filtered_version

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def seed_version(data: Path) -> None:
    from oresearcher.config import load_config
    from oresearcher.seeds import ingest_files, write_seed_version

    seeds = REPO / "seeds" / "default.jsonl"
    write_seed_version(ingest_files([seeds], load_config(REPO / "configs" / "tiny.yaml").ingest), data, [seeds])


@pytest.mark.slow
def test_sft_then_grpo_then_heldout_register_log_and_compare(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.grpo import grpo
    from flows.heldout import heldout
    from flows.sft import sft
    from models.tiny import build_tiny_model
    from oresearcher.config import load_config
    from tasks.heldout import local_model

    data, uri, tiny = tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}", build_tiny_model()
    write_filtered_version(data, "unreviewed")
    seed_version(data)
    overrides = [f"paths.data_dir={data}", f"paths.checkpoints_dir={tmp_path / 'ckpt'}", f"mlflow.tracking_uri={uri}",
                 f"model.name={tiny}", f"filter.judge.model.name={tiny}", "filter.judge.guide.reason=20",
                 f"research.tape.path={tmp_path / 'tape.sqlite'}", "sft.max_steps=2", "grpo.max_steps=1",
                 "grpo.num_generations=2", "grpo.queries_per_step=1", "rollout.max_new_tokens=16",
                 "rollout.max_turns=2", "heldout.limit=2"]
    config = str(REPO / "configs" / "tiny.yaml")
    tuned = sft(config_path=config, overrides=overrides)
    reinforced = grpo(config_path=config, overrides=overrides)

    client = MlflowClient(uri)
    assert reinforced["start_from"] == f"models:/o-researcher-policy/{tuned['model_version']}"
    mv = client.get_model_version_by_alias("o-researcher-policy", "challenger")
    assert mv.version == reinforced["model_version"] != tuned["model_version"]
    assert mv.tags["stage"] == "grpo" and mv.tags["start_from"] == reinforced["start_from"]
    run = client.get_run(reinforced["run_id"])
    for term in ("judge", "tool", "format"):
        assert len(client.get_metric_history(run.info.run_id, f"train/rewards/{term}/mean")) == 1
    assert client.get_metric_history(run.info.run_id, "train/tools/calls_mean")
    assert run.data.tags["guard"] == "no guard tripped"
    guard = client.download_artifacts(run.info.run_id, "grpo/guard.json", str(tmp_path))
    assert '"stopped": false' in Path(guard).read_text()
    # the registered GRPO version continues the SFT adapter: same shape, loadable on its own from the alias
    cfg = load_config(config, overrides)
    loaded = local_model(cfg, "models:/o-researcher-policy@challenger")
    assert (Path(loaded) / "config.json").is_file()

    compared = asyncio.run(heldout(config_path=config, overrides=overrides))
    assert list(compared["results"]) == ["base", "sft", "grpo"] and compared["queries"] == 2
    for label in ("base", "sft", "grpo"):
        [r] = client.search_runs([run.info.experiment_id], f"tags.mlflow.runName = 'heldout-{label}'")
        for metric in ("valid", "tool_calls", "citations", "observed_reference_rate", "reward"):
            assert f"heldout/{metric}" in r.data.metrics
        assert len(client.list_artifacts(r.info.run_id, "heldout")) == 1
    lines = compared["table"].splitlines()
    assert "2 queries" in lines[0] and [line.split()[0] for line in lines[2:]] == ["base", "sft", "grpo"]


def test_heldout_fetches_every_model_before_the_first_rollout(prefect_server, tmp_path):
    """A registry version listed second that does not exist stops the flow before the first model (the base, which
    resolves) rolls out: no `heldout-*` run, no rollout, one `StartNotFound` naming the URI."""
    from mlflow.tracking import MlflowClient

    from flows.heldout import heldout
    from models.tiny import build_tiny_model
    from oresearcher.registry import StartNotFound

    uri, tiny = f"sqlite:///{tmp_path / 'mlflow.db'}", build_tiny_model()
    overrides = [f"paths.data_dir={tmp_path / 'data'}", f"paths.checkpoints_dir={tmp_path / 'ckpt'}",
                 f"mlflow.tracking_uri={uri}", f"model.name={tiny}", f"filter.judge.model.name={tiny}",
                 f"research.tape.path={tmp_path / 'tape.sqlite'}", "rollout.max_new_tokens=16", "rollout.max_turns=1",
                 "heldout.limit=1"]
    with pytest.raises(StartNotFound, match="models:/o-researcher-policy/99 is not in the registry"):
        asyncio.run(heldout(config_path=str(REPO / "configs" / "tiny.yaml"), overrides=overrides,
                            models=[tiny, "models:/o-researcher-policy/99"], labels=["base", "missing"]))
    client = MlflowClient(uri)
    runs = [r.info.run_name for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert not [name for name in runs if name.startswith("heldout-")], runs
    assert not (tmp_path / "data" / "llm.sqlite").exists()  # where the base model's responses would be stored


def cli(*args: str, env_cfg: list[str]) -> subprocess.CompletedProcess:
    overrides = [x for o in env_cfg for x in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "oresearcher.cli", *args, *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_grpo_without_an_sft_version_is_one_line(tmp_path):
    data = tmp_path / "data"
    seed_version(data)
    r = cli("grpo", env_cfg=[f"paths.data_dir={data}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("error: no SFT version of o-researcher-policy in the registry: run `oresearcher sft` "
                                "first, or set grpo.start_from")


def test_grpo_dry_run_prints_the_vllm_server_command_of_the_paper_config():
    r = subprocess.run([sys.executable, "-m", "oresearcher.cli", "grpo", "--config", "configs/paper.yaml", "--dry-run",
                        "--from", "models:/o-researcher-policy/7"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "trl vllm-serve --model checkpoints/registry/o-researcher-policy-v7" in r.stdout.replace(str(REPO) + "/", "")
    assert "rollout_backend: vllm_server" in r.stdout

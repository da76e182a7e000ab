"""The pipeline flow end to end on the embedded defaults, inside a throwaway git + DVC repo with a local remote."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oresearcher.versioning import VersioningError, version_data

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def dvc(*args, cwd):
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def dvc_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo)
    return repo


def test_version_data_includes_uncheckpointed_sqlite_and_restores(dvc_repo):
    db = dvc_repo / "data" / "tape.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.commit()  # rows sit in the -wal file; the connection stays open
    version = version_data(dvc_repo / "data")
    conn.close()
    assert version.endswith(".dir")
    assert yaml.safe_load((dvc_repo / "data.dvc").read_text())["outs"][0]["md5"] == version
    # Restore from the remote alone: drop the workspace copy and the local cache.
    subprocess.run(["rm", "-rf", str(dvc_repo / "data"), str(dvc_repo / ".dvc" / "cache")], check=True)
    dvc("pull", "-q", cwd=dvc_repo)
    assert sqlite3.connect(dvc_repo / "data" / "tape.sqlite").execute("SELECT COUNT(*) FROM t").fetchone()[0] == 100


def test_version_data_outside_a_dvc_repo_is_a_clear_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(VersioningError, match="not inside a DVC repository"):
        version_data(tmp_path / "data")


@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect server and database, stopped cleanly when the module's tests end."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_pipeline_ingests_synthesizes_versions_and_tracks(prefect_server, dvc_repo, tmp_path):
    """The whole flow with a stand-in teacher API: seeds → traces, DVC versions, MLflow runs, metrics and traces."""
    import asyncio

    from mlflow.tracking import MlflowClient
    from teacher_api import TeacherAPI

    from flows.pipeline import pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with TeacherAPI(latency_s=0.01) as api:
        result = asyncio.run(pipeline(
            config_path=str(REPO / "configs" / "tiny.yaml"),
            overrides=[f"paths.data_dir={dvc_repo / 'data'}", f"mlflow.tracking_uri={uri}",
                       f"research.tape.path={dvc_repo / 'data' / 'tape.sqlite'}", "synthesis.teacher.backend=openai",
                       f"synthesis.teacher.base_url={api.base_url}", "synthesis.limit=3",
                       "synthesis.prefill_think=false"]))
    assert result["index"]["docs"] == 10033 and result["seeds"]["counts"]["accepted"] >= 60
    synth = result["synthesis"]
    assert synth["status"] == "complete" and synth["traces"] == 3 and synth["valid"] == 3
    assert synth["data_version"] == yaml.safe_load((dvc_repo / "data.dvc").read_text())["outs"][0]["md5"]
    records = [json.loads(line) for line in (dvc_repo / "data" / "traces" / "traces.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["valid"] and r["seed_version"] == result["seeds"]["seed_version"]
                                     for r in records)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("o-researcher-tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["ingest"].data.metrics["ingest/accepted"] >= 60
    assert runs["synthesize"].data.metrics["synth/valid_rate"] == 1.0
    assert runs["synthesize"].data.params["synthesis.teacher.backend"] == "openai"
    assert runs["synthesize"].data.tags["data_version"] == synth["data_version"]
    traces = client.search_traces(locations=[exp.experiment_id], max_results=10)
    assert len(traces) >= 3  # one MLflow trace per seed, with agent, LLM and tool spans
    kinds = {sp.span_type for t in traces for sp in t.data.spans}
    assert {"AGENT", "LLM", "TOOL"} <= kinds

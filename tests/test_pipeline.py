"""The pipeline flow end to end on the embedded defaults, inside a throwaway git + DVC repo with a local remote."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oresearcher.versioning import VersioningError, version_data


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
def test_pipeline_flow_runs_and_tracks(prefect_server, dvc_repo, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = pipeline(config_path=str(Path(__file__).parent.parent / "configs" / "tiny.yaml"),
                      overrides=[f"paths.data_dir={dvc_repo / 'data'}", f"mlflow.tracking_uri={uri}",
                                 f"research.tape.path={dvc_repo / 'data' / 'tape.sqlite'}"])
    assert result["index"]["docs"] == 10033 and result["probe"]["pages_crawled"] == 3
    assert result["data_version"] == yaml.safe_load((dvc_repo / "data.dvc").read_text())["outs"][0]["md5"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("o-researcher-tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["env/index_docs"] == 10033
    assert run.data.params["model.name"] == "smollm2-135m-instruct"
    assert run.data.tags["data_version"] == result["data_version"]

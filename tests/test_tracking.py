"""MLflow runs of the stages: a stage killed midway does not stay RUNNING forever, and each run and its Prefect
flow run point at each other."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

STAGE = """
import sys, time
sys.path.insert(0, {repo!r})
from oresearcher.config import load_config
from oresearcher.tracking import stage_run
cfg = load_config({config!r}, ["mlflow.tracking_uri={uri}"])
with stage_run(cfg, "doomed") as (client, run_id):
    print(run_id, flush=True)
    time.sleep(600)
"""


def test_a_run_whose_stage_was_killed_is_marked_killed_at_the_next_start(tmp_path):
    from mlflow.tracking import MlflowClient

    from oresearcher.config import load_config
    from oresearcher.tracking import stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"mlflow.tracking_uri={uri}"])
    proc = subprocess.Popen([sys.executable, "-c", STAGE.format(repo=str(REPO), config=str(REPO / "configs" / "tiny.yaml"),
                                                                 uri=uri)], stdout=subprocess.PIPE, text=True)
    dead_run = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)  # no `finally`: the run stays RUNNING
    proc.wait()
    client = MlflowClient(uri)
    assert client.get_run(dead_run).info.status == "RUNNING"
    with stage_run(cfg, "live") as (_, live_run):
        # a run of a live process (this one) is not touched, even while another stage starts
        with stage_run(cfg, "next"):
            assert client.get_run(live_run).info.status == "RUNNING"
    dead = client.get_run(dead_run)
    assert dead.info.status == "KILLED" and "was gone" in dead.data.tags["killed_reason"]
    assert client.get_run(live_run).info.status == "FINISHED"


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_stage_runs_and_prefect_flow_runs_link_each_other(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client

    from oresearcher.config import load_config
    from oresearcher.tracking import stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"mlflow.tracking_uri={uri}", "mlflow.ui_url=http://mlflow:5000"])

    @flow(name="linked")
    def linked() -> tuple[str, str]:
        from prefect.runtime import flow_run

        with stage_run(cfg, "linked-stage") as (_, run_id):
            return run_id, str(flow_run.get_id())

    run_id, flow_run_id = linked()
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["prefect.flow_run_id"] == flow_run_id and flow_run_id in tags["prefect.flow_run_url"]

    async def links() -> list[str]:
        async with get_client() as client:
            return [a.data for a in await client.read_artifacts()]  # a link artifact is stored as "[text](url)"

    exp_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    url = f"http://mlflow:5000/#/experiments/{exp_id}/runs/{run_id}"
    assert any(url in str(data) for data in asyncio.run(links()))



def test_stage_runs_inside_a_pipeline_run_are_its_children(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect import flow

    from oresearcher.config import load_config
    from oresearcher.tracking import parent_run, stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"mlflow.tracking_uri={uri}"])

    @flow(name="sync-stage")
    def sync_stage() -> str:
        with stage_run(cfg, "sync-stage") as (_, run_id):
            return run_id

    @flow(name="async-stage")
    async def async_stage() -> str:
        with stage_run(cfg, "async-stage") as (_, run_id):
            return run_id

    @flow(name="whole")
    async def whole() -> tuple[str, list[str]]:
        with parent_run(cfg, "whole") as (_, parent):
            return parent, [sync_stage(), await async_stage()]

    parent, children = asyncio.run(whole())
    client = MlflowClient(uri)
    assert [client.get_run(c).data.tags.get("mlflow.parentRunId") for c in children] == [parent, parent]
    with stage_run(cfg, "after") as (_, later):  # outside the pipeline: a top-level run again
        pass
    assert "mlflow.parentRunId" not in client.get_run(later).data.tags


def test_a_prefect_concurrency_limit_caps_paid_requests_across_clients(prefect_server):
    """Two clients of one paid key (as two runs would be), 4 requests each at once: with the shared Prefect limit of
    1, the API never sees two in flight; without it, it does."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from teacher_api import TeacherAPI

    from models.llm import make_client
    from oresearcher.config import ModelConfig

    async def create() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="teacher-key", limit=1))

    asyncio.run(create())

    def burst(api, limit: str | None) -> int:
        clients = [make_client(ModelConfig(name="teacher", backend="openai", base_url=api.base_url,
                                           max_concurrency=8, prefect_concurrency_limit=limit)) for _ in range(2)]

        async def go():
            try:
                await asyncio.gather(*(c.chat([{"role": "user", "content": f"question {i} of {k}"}])
                                       for k, c in enumerate(clients) for i in range(4)))
            finally:
                for c in clients:
                    await c.aclose()

        asyncio.run(go())
        return api.stats()["max_in_flight"]

    with TeacherAPI(latency_s=0.2) as api:
        assert burst(api, "teacher-key") == 1
    with TeacherAPI(latency_s=0.2) as api:
        assert burst(api, None) > 1
    with pytest.raises(Exception, match="no-such-limit|not found|does not exist"):  # a typo is an error, not no limit
        with TeacherAPI(latency_s=0.0) as api:
            burst(api, "no-such-limit")

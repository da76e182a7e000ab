"""The README's Prefect steps, for real, from a fresh clone with nothing beside it: a Prefect server, a process
work pool and worker, `prefect deploy --all`, then the ingest deployment, a one-seed synthesize deployment (the
embedded model as teacher) and the whole pipeline deployment run to Completed, writing into the clone's own data
tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from checkout import free_port, fresh_checkout
from teacher_api import SHAPE, TeacherAPI

from models.tiny import build_tiny_model

PREFECT = str(Path(sys.executable).parent / "prefect")


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # three deployments, the whole pipeline among them: ~3 min alone, far more on loaded cores
def test_deployments_run_from_a_fresh_clone(tmp_path):
    clone = fresh_checkout(tmp_path / "alone" / "clone")  # no ../shared, no .venv, no data/ beside or inside
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ORESEARCHER_EVAL"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="2", PYTHONUNBUFFERED="1",
               TEST_TEACHER_KEY="sk-test-deployment")  # the stand-in teacher's key, as a worker host would hold it
    host, port = api.removeprefix("http://").removesuffix("/api").split(":")
    server = start([PREFECT, "server", "start", "--host", host, "--port", port], env, tmp_path, tmp_path / "server.log")
    worker = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)

        def prefect(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
            proc = subprocess.run([PREFECT, *args], env=env, cwd=clone, capture_output=True, text=True,
                                  timeout=timeout)
            assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            return proc

        prefect("work-pool", "create", "local", "--type", "process")
        deployed = prefect("--no-prompt", "deploy", "--all")
        assert deployed.stdout.count("successfully created") == 10, deployed.stdout[-3000:]
        worker = start([PREFECT, "worker", "start", "--pool", "local"], env, clone, tmp_path / "worker.log")

        prefect("deployment", "run", "ingest/ingest-tiny", "--watch")
        small = ["synthesis.limit=1", "synthesis.max_subtasks=1", "synthesis.max_steps=2",
                 "synthesis.teacher.max_new_tokens=48"]
        prefect("deployment", "run", "synthesize/synthesize-tiny", "--param", f"overrides={json.dumps(small)}",
                "--watch", timeout=600)
        # the embedded model as teacher, through the deployment: one trace, written into the clone's own data tree
        (record,) = [json.loads(line) for line in (clone / "data" / "traces" / "traces.jsonl").read_text().splitlines()]
        assert record["failure"] is None and record["trace"].startswith("<subtask_list>")

        # The whole `pipeline` deployment: its stages as subflows, each Completed. Its teacher is the stand-in API
        # and its policy the tiny random-init model, as in tests/test_pipeline.py: the mechanics through a
        # worker, not the embedded model's effect (that is `make run`).
        with TeacherAPI(latency_s=0.01) as teacher:
            quick = ["synthesis.teacher.backend=openai", f"synthesis.teacher.base_url={teacher.base_url}",
                     "synthesis.teacher.api_key_env=TEST_TEACHER_KEY", "synthesis.limit=3",
                     "synthesis.prefill_think=false", "filter.rules.min_report_chars=100", *SHAPE,
                     f"model.name={build_tiny_model()}", "sft.max_steps=2", "grpo.max_steps=1",
                     "grpo.num_generations=2", "grpo.queries_per_step=1", "rollout.max_new_tokens=16",
                     "rollout.max_turns=2", "heldout.limit=2"]
            prefect("deployment", "run", "pipeline/pipeline-tiny", "--param", f"overrides={json.dumps(quick)}",
                    "--watch", timeout=900)

        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        states = {r["name"]: r["state_type"] for r in runs}
        flows: dict[str, set[str]] = {}
        for r in runs:
            flows.setdefault(httpx.get(f"{api}/flows/{r['flow_id']}", timeout=10).json()["name"], set()).add(
                r["state_type"])
        # every run asked for completed, with the pipeline's stages; retrain's weekly schedule has queued its next
        # runs, none due yet
        stages = {"pipeline", "ingest", "synthesize", "filter", "sft", "grpo", "heldout", "evaluate"}
        assert flows == {**{name: {"COMPLETED"} for name in stages}, "retrain": {"SCHEDULED"}}, states
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
    # The runs used the clone's own code and wrote into the clone's own data tree and MLflow store.
    assert (clone / "data" / "seeds" / "seeds.jsonl").read_text().count("\n") >= 50
    assert (clone / "data" / "traces" / "traces.jsonl").read_text().count("\n") == 3
    assert (clone / "mlflow.db").is_file()

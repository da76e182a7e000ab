"""The pipeline flow end to end (stand-in teacher API) inside a throwaway git + DVC repo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect server and database, stopped cleanly when the module's tests end."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


SECRET = "sk-teacher-secret-4f2a"


@pytest.mark.slow
def test_pipeline_ingests_synthesizes_versions_and_tracks(prefect_server, dvc_repo, tmp_path, monkeypatch):
    """The whole flow with the stand-in teacher API (a paid API's test double; the embedded model's own run is
    `make run`): seeds → traces, DVC versions, MLflow runs with their traces, the Prefect view of the run, and
    the teacher's API key nowhere but in the request headers."""
    import asyncio

    from mlflow.tracking import MlflowClient
    from teacher_api import SHAPE, TeacherAPI

    from flows.pipeline import pipeline
    from models.tiny import build_tiny_model

    monkeypatch.setenv("TEST_TEACHER_KEY", SECRET)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with TeacherAPI(latency_s=0.01) as api:
        result = asyncio.run(pipeline(
            config_path=str(REPO / "configs" / "tiny.yaml"),
            overrides=[f"paths.data_dir={dvc_repo / 'data'}", f"mlflow.tracking_uri={uri}",
                       f"research.tape.path={dvc_repo / 'data' / 'tape.sqlite'}", "synthesis.teacher.backend=openai",
                       f"synthesis.teacher.base_url={api.base_url}", "synthesis.teacher.api_key_env=TEST_TEACHER_KEY",
                       "synthesis.limit=3", "synthesis.prefill_think=false",
                       "filter.rules.min_report_chars=100", *SHAPE,  # the stand-in teacher's short reports
                       # training stages on the tiny random-init policy: their mechanics, not their effect
                       f"model.name={build_tiny_model()}", f"paths.checkpoints_dir={tmp_path / 'ckpt'}",
                       "sft.max_steps=2", "grpo.max_steps=1", "grpo.num_generations=2", "grpo.queries_per_step=1",
                       "rollout.max_new_tokens=16", "rollout.max_turns=2", "heldout.limit=2"]))
    assert result["index"]["docs"] == 10033 and result["seeds"]["counts"]["accepted"] >= 50
    synth = result["synthesis"]
    assert synth["status"] == "complete" and synth["traces"] == 3 and synth["valid"] == 3
    assert synth["data_version"]
    records = [json.loads(line) for line in (dvc_repo / "data" / "traces" / "traces.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["valid"] and r["seed_version"] == result["seeds"]["seed_version"]
                                     for r in records)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("o-researcher-tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["ingest"].data.metrics["ingest/accepted"] >= 50
    assert runs["synthesize"].data.metrics["synth/valid_rate"] == 1.0
    assert runs["synthesize"].data.params["synthesis.teacher.backend"] == "openai"
    assert runs["synthesize"].data.tags["data_version"] == synth["data_version"]
    # every stage's run names what it read as MLflow dataset inputs (the runs table's Dataset column)
    inputs = {name: [d.dataset.name for d in r.inputs.dataset_inputs] for name, r in runs.items()}
    assert inputs["ingest"] == ["default.jsonl"]
    assert inputs["synthesize"] == [f"seeds-{result['seeds']['seed_version']}"]
    assert inputs["filter"] == [f"traces-{result['seeds']['seed_version']}"]
    assert inputs["grpo"] == [f"seeds-{result['seeds']['seed_version']}"] and inputs["sft"]
    assert all(inputs[f"heldout-{m}"] == ["heldout.jsonl"] for m in ("base", "sft", "grpo"))
    # and the Prefect flow run it ran in; each is a child of this invocation's `pipeline` run, whose lineage.json
    # names what each stage made
    assert all(r.data.tags.get("prefect.flow_run_id") for r in runs.values())
    parent = runs["pipeline"].info.run_id
    assert all(runs[n].data.tags.get("mlflow.parentRunId") == parent
               for n in ("ingest", "synthesize", "filter", "sft", "grpo", "heldout-sft", "evaluate-heldout"))
    lineage = json.loads(Path(client.download_artifacts(parent, "lineage.json", str(tmp_path))).read_text())
    assert lineage["seeds"]["seed_version"] == result["seeds"]["seed_version"]
    assert lineage["grpo"]["model_version"] == result["grpo"]["model_version"]
    assert lineage["evaluation"]["run_id"] == result["evaluation"]["run_id"]
    # One MLflow trace per seed on the synthesize run's page, with agent, LLM and tool spans, the query as its
    # input and the report as its output.
    run_id = runs["synthesize"].info.run_id
    traces = client.search_traces(locations=[exp.experiment_id], run_id=run_id, max_results=50)
    assert len(traces) == 3
    assert {sp.span_type for t in traces for sp in t.data.spans} >= {"AGENT", "LLM", "TOOL"}
    reports = {r["query"]: r["report"] for r in records}
    for t in traces:
        root = next(sp for sp in t.data.spans if sp.parent_id is None)
        assert root.outputs == reports[root.inputs["query"]]
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts beside the tracking database, not in the cwd

    # Prefect: one task run per seed and a progress artifact at 100 %.
    task_runs, artifacts = asyncio.run(_prefect_view())
    assert sorted(n for n in task_runs if n.startswith("seed-")) == sorted(f"seed-{r['seed_id']}" for r in records)
    assert artifacts["synthesis-progress"] == 100.0

    # Filtering: the three tiers over the 3 traces (the embedded model judging), a filtered version marked
    # unreviewed, its report as a Prefect table, MLflow artifacts and filter/* metrics.
    filt = result["filter"]
    assert filt["counts"]["input"] == 3 and filt["gate"] == "unreviewed"
    assert filt["judge"]["parsed"] == filt["judge"]["judged"] == filt["counts"]["tier1_kept"] >= 1, filt["rules"]
    folder = dvc_repo / "data" / "filtered" / filt["version"]
    assert json.loads((folder / "gate.json").read_text())["status"] == "unreviewed"
    assert len((folder / "verdicts.jsonl").read_text().splitlines()) == 3
    table = json.loads(artifacts["filter-report"]) if isinstance(artifacts["filter-report"], str) else \
        artifacts["filter-report"]
    assert isinstance(table, list)
    run = runs["filter"]
    assert run.data.metrics["filter/input"] == 3 and run.data.tags["filtered_version"] == filt["version"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "filter")} == {"filter/report.json",
                                                                                  "filter/report.md"}
    # the filter's data version was pushed to the remote; the last one (data.dvc) is the evaluation's, with the
    # frozen reference reports
    md5 = filt["data_version"].removesuffix(".dir")
    assert (tmp_path / "remote" / "files" / "md5" / md5[:2] / f"{md5[2:]}.dir").is_file()
    assert result["evaluation"]["data_version"] == yaml.safe_load((dvc_repo / "data.dvc").read_text())["outs"][0]["md5"]
    from oresearcher.cli import _filter_lines  # what `make run` prints at its end

    printed = _filter_lines(filt)
    assert "tier 1 (rules) kept" in printed and "tier 2 (judge) kept" in printed and "scores parsed" in printed

    # Training: SFT on the filtered version, GRPO from it (registered @challenger), and the held-out table of
    # base, SFT and the GRPO version loaded back through the alias; `make run` prints all of it.
    assert result["sft"]["dataset_version"] == filt["version"] and result["grpo"]["model_version"]
    assert result["grpo"]["start_from"].endswith(f"/{result['sft']['model_version']}")
    held = result["heldout"]
    assert list(held["results"]) == ["base", "sft", "grpo"]
    assert held["models"]["grpo"] == "models:/o-researcher-policy@challenger" and held["sample"]["trace"]
    rows = json.loads(artifacts["heldout"]) if isinstance(artifacts["heldout"], str) else artifacts["heldout"]
    assert [r["model"] for r in rows] == ["base", "sft", "grpo"]  # the table, also in the Prefect UI
    assert [r["format valid"] for r in rows] == [round(held["results"][m]["valid"], 3) for m in ("base", "sft", "grpo")]
    from oresearcher.cli import _training_lines

    printed = _training_lines(result, "o-researcher-policy")
    assert "held-out split, 2 queries, unguided:" in printed and "@challenger" in printed

    # Evaluation ends the pipeline: the same three models on the held-out split, scored with intervals, and the
    # GRPO version (@challenger) compared with the base model (no champion yet), the decision recorded.
    ev = result["evaluation"]
    assert list(ev["summaries"]) == ["base", "sft", "grpo"] and ev["tasks"] == 2
    assert all("race_ci_lo" in m for m in ev["summaries"].values())
    decision = ev["decision"]
    assert decision["challenger"].endswith("@challenger") and decision["champion"] == ev["models"]["base"]
    assert client.get_run(ev["run_id"]).data.tags["promoted"] == str(decision["promote"]).lower()
    grpo_version = client.get_model_version("o-researcher-policy", result["grpo"]["model_version"])
    assert client.get_run(grpo_version.tags["eval.heldout.run"]).data.tags["label"] == "grpo"
    assert "promotion" in grpo_version.tags
    _, artifacts = asyncio.run(_prefect_view())
    assert "evaluation on heldout" in artifacts["evaluation-heldout"]  # the table in the Prefect UI
    from oresearcher.cli import _evaluation_lines

    printed = _evaluation_lines(ev)
    assert "evaluation on heldout, 2 tasks" in printed and "promotion:" in printed and "report.html" in printed

    # DVC: each stage run that read the data tree names the version and the path of each input; the final
    # evaluation's inputs (its frozen queries and reference reports) come back byte for byte through
    # `oresearcher restore` on a fresh clone that reaches the remote, though the workspace has moved on since and
    # the local DVC cache is gone.
    for name in ("synthesize", "filter", "sft", "grpo", "evaluate-heldout", "evaluate-heldout-grpo"):
        tags = [{t.key: t.value for t in d.tags} for d in runs[name].inputs.dataset_inputs]
        assert tags and all(t.get("dvc.version", "").endswith(".dir") and t.get("dvc.path") for t in tags), name
    read = {t.value for d in runs["evaluate-heldout-grpo"].inputs.dataset_inputs for t in d.tags if t.key == "dvc.path"}
    assert {p.split("/")[1] for p in read} == {"queries", "reference"}
    before = {p: (dvc_repo / "data" / p).read_bytes() for p in read}
    for p in read:
        with open(dvc_repo / "data" / p, "a") as f:
            f.write("{}\n")
    subprocess.run(["rm", "-rf", str(dvc_repo / ".dvc" / "cache")], check=True)
    from checkout import fresh_checkout

    clone = fresh_checkout(tmp_path / "clone")
    proc = subprocess.run([sys.executable, "-m", "oresearcher.cli", "restore", ev["run_id"], "--into",
                           str(tmp_path / "back"), "--set", f"mlflow.tracking_uri={uri}"], cwd=clone,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(clone)  # a copy of the sources (this file names the secret the scan below looks for)
    assert {p: (tmp_path / "back" / p).read_bytes() for p in read} == before
    assert sorted(str(p.relative_to(tmp_path / "back")) for p in (tmp_path / "back").rglob("*") if p.is_file()) \
        == sorted(read)
    # Lineage cards: the GRPO version's description in the registry walks back to the seed files, through the
    # runs that wrote each dataset it came from; the evaluation run's card reaches the models it compared.
    card = client.get_model_version("o-researcher-policy", result["grpo"]["model_version"]).description
    stages = [line.split(" (run ")[0].removeprefix("## ") for line in card.splitlines() if line.startswith("## ")]
    assert stages[:5] == ["grpo", "ingest", "sft", "filter", "synthesize"], card
    assert f"wrote `filtered/{filt['version']}`" in card and "read default.jsonl" in card
    assert f"`{runs['synthesize'].info.run_id}`" in card and "synth/cost_usd" in card
    from oresearcher.cli import main as cli_main

    assert cli_main(["lineage", f"models:/o-researcher-policy/{result['grpo']['model_version']}", "--set",
                     f"mlflow.tracking_uri={uri}"]) == 0
    ev_card = Path(client.download_artifacts(ev["run_id"], "lineage.md", str(tmp_path))).read_text()
    assert "## evaluate-heldout-grpo" in ev_card and "## grpo" in ev_card and "## ingest" in ev_card
    # the pipeline run read nothing itself: its stages' inputs, each at the version its stage recorded
    from oresearcher.versioning import restore_run

    every = restore_run(client, parent, tmp_path / "all")
    assert {d.relpath for d, _ in every} == {"seeds/seeds.jsonl", "traces/traces.jsonl",
                                             f"filtered/{filt['version']}", *read}
    from oresearcher.cli import _where_to_look
    from oresearcher.config import load_config

    where = _where_to_look(load_config(REPO / "configs" / "tiny.yaml", [f"mlflow.tracking_uri={uri}"]), result)
    assert f"evaluation {ev['data_version']}" in where and "oresearcher ui" in where and uri in where
    assert "oresearcher restore <run id>" in where and ev["run_id"] in where

    # The key travelled only in the Authorization header: not in any file written, the MLflow database
    # (params, traces) or the run's logs (what the console showed, as stored by Prefect).
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in written) and any(p.name == "llm.sqlite" for p in written)
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]
    logs = asyncio.run(_prefect_logs())
    assert "seeds, 0 already done" in logs and SECRET not in logs
    assert "LOAD_GLOBAL" not in logs  # no bytecode listing from the training stages' dataset fingerprints


async def _prefect_view() -> tuple[list[str], dict[str, float]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        task_runs = await client.read_task_runs()
        artifacts = await client.read_artifacts()
    return [t.name for t in task_runs], {a.key: a.data for a in artifacts if a.key}


async def _prefect_logs() -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return "\n".join(log.message for log in await client.read_logs())


@pytest.mark.slow
def test_synthesis_token_budget_is_wired_from_config(prefect_server, tmp_path):
    """`synthesis.max_tokens` in the config stops the flow cleanly; a later run with more budget continues."""
    import asyncio

    from teacher_api import SHAPE, TeacherAPI

    from flows.synthesize import synthesize
    from oresearcher.seeds import ingest_files, write_seed_version

    data = tmp_path / "data"
    base = [f"paths.data_dir={data}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"research.tape.path={data / 'tape.sqlite'}", "synthesis.limit=4", "synthesis.concurrency=1",
            "synthesis.prefill_think=false", "synthesis.mlflow_traces=false", "synthesis.teacher.backend=openai",
            "synthesis.max_subtasks=3", *SHAPE]  # the stand-in teacher's shape: ~8,500 tokens a seed
    seeds = ingest_files([REPO / "seeds" / "default.jsonl"], load_config_tiny().ingest)
    write_seed_version(seeds, data, [REPO / "seeds" / "default.jsonl"])
    with TeacherAPI(latency_s=0.0) as api:
        args = {"config_path": str(REPO / "configs" / "tiny.yaml")}
        capped = asyncio.run(synthesize(**args, overrides=[*base, f"synthesis.teacher.base_url={api.base_url}",
                                                           "synthesis.max_tokens=20000"]))
        assert capped["status"] == "budget_spent" and 0 < capped["traces"] < 4
        rest = asyncio.run(synthesize(**args, overrides=[*base, f"synthesis.teacher.base_url={api.base_url}"]))
    assert rest["status"] == "complete" and rest["traces"] == 4


def load_config_tiny():
    from oresearcher.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml")


@pytest.mark.slow
def test_an_endpoint_that_refuses_grammars_fails_seeds_retryably_and_names_the_setting(prefect_server, tmp_path):
    """The synthesize flow against a server without grammar support: every seed fails with an error naming
    `synthesis.teacher.grammar_api`, and is left to retry; with the setting fixed, a re-run completes them."""
    import asyncio

    from teacher_api import SHAPE, TeacherAPI

    from flows.synthesize import synthesize
    from oresearcher.seeds import ingest_files, write_seed_version

    data = tmp_path / "data"
    base = [f"paths.data_dir={data}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"research.tape.path={data / 'tape.sqlite'}", "synthesis.limit=2", "synthesis.mlflow_traces=false",
            "synthesis.teacher.backend=openai", "synthesis.max_subtasks=3", *SHAPE]
    write_seed_version(ingest_files([REPO / "seeds" / "default.jsonl"], load_config_tiny().ingest), data,
                       [REPO / "seeds" / "default.jsonl"])
    args = {"config_path": str(REPO / "configs" / "tiny.yaml")}
    with TeacherAPI(latency_s=0.0, reject_grammar=True) as api:
        url = f"synthesis.teacher.base_url={api.base_url}"
        refused = asyncio.run(synthesize(**args, overrides=[*base, url, "synthesis.teacher.grammar_api=vllm"]))
        records = [json.loads(line) for line in (data / "traces" / "traces.jsonl").read_text().splitlines()]
        assert refused["failures"] == 2 and all(r["retryable"] for r in records)
        assert all("set synthesis.teacher.grammar_api" in r["failure"] for r in records)
        fixed = asyncio.run(synthesize(**args, overrides=[*base, url, "synthesis.teacher.grammar_api=none"]))
    assert fixed["status"] == "complete" and fixed["valid"] == 2 and fixed["failures"] == 0


@pytest.mark.slow
def test_synthesis_on_a_dask_cluster_of_two_processes_gives_the_same_traces(prefect_server, tmp_path):
    """`synthesis.task_runner=dask`: the synthesize flow's seeds run as tasks on a local Dask cluster of two worker
    processes (prefect-dask's DaskTaskRunner), each with its own clients, all appending to one trace store; the
    traces are the ones the default runner writes."""
    import asyncio
    import os

    from teacher_api import SHAPE, TeacherAPI

    from flows.synthesize import synthesize
    from oresearcher.seeds import ingest_files, write_seed_version

    def overrides(data: Path, url: str) -> list[str]:
        return [f"paths.data_dir={data}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"research.tape.path={data / 'tape.sqlite'}", "synthesis.limit=4", "synthesis.mlflow_traces=false",
                "synthesis.prefill_think=false", "synthesis.teacher.backend=openai", "synthesis.max_subtasks=3",
                f"synthesis.teacher.base_url={url}", *SHAPE]

    def records(data: Path) -> list[dict]:
        return [json.loads(line) for line in (data / "traces" / "traces.jsonl").read_text().splitlines()]

    local, dask = tmp_path / "local" / "data", tmp_path / "dask" / "data"
    for data in (local, dask):
        write_seed_version(ingest_files([REPO / "seeds" / "default.jsonl"], load_config_tiny().ingest), data,
                           [REPO / "seeds" / "default.jsonl"])
    args = {"config_path": str(REPO / "configs" / "tiny.yaml")}
    with TeacherAPI(latency_s=0.0) as api:
        by_default = asyncio.run(synthesize(**args, overrides=overrides(local, api.base_url)))
        on_dask = asyncio.run(synthesize(**args, overrides=[*overrides(dask, api.base_url),
                                                            "synthesis.task_runner=dask", "synthesis.dask_workers=2"]))
    assert by_default["status"] == on_dask["status"] == "complete" and on_dask["traces"] == 4
    made = {(r["seed_id"], r["candidate"]): (r["id"], r["trace"], r["report"], r["valid"]) for r in records(dask)}
    assert made == {(r["seed_id"], r["candidate"]): (r["id"], r["trace"], r["report"], r["valid"])
                    for r in records(local)}
    assert len(records(dask)) == 4  # each seed once, though two processes appended to the one file
    workers = {r["worker"] for r in records(dask)}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers), workers
    assert {r["worker"] for r in records(local)} == {f"{__import__('socket').gethostname()}:{os.getpid()}"}

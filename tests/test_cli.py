"""The command line: a user error is one clear line and a non-zero exit, found before any Prefect server starts;
commands that need no server start none."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEEDS = str(REPO / "seeds" / "default.jsonl")


def cli(*args: str, home: Path, cwd: Path | None = None, **env_vars: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `oresearcher ARGS` with no Prefect server configured: a flow would start a temporary one in `home`."""
    env = {k: v for k, v in os.environ.items()  # as a user's shell: no server, no settings the test suite made
           if not k.startswith("PREFECT_API") and k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    env.update(PREFECT_HOME=str(home), **env_vars)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "oresearcher.cli", *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


def server_started(home: Path) -> bool:
    return (home / "prefect.db").exists()  # where Prefect's temporary server keeps its database


@pytest.fixture
def binary_seed_file(tmp_path) -> str:
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    return str(path)


@pytest.mark.parametrize(("args", "named"), [
    (["ingest", SEEDS, "--set", "synthesis.limitt=3"], "synthesis.limitt: Extra inputs are not permitted"),
    (["ingest", SEEDS, "--set", "synthesis.limit=many"], "synthesis.limit: Input should be a valid integer"),
    (["ingest", "no/such/seeds.jsonl"], "no/such/seeds.jsonl: no such file"),
    (["ingest", "BINARY"], "a binary file, not text"),
    (["run", "--config", "configs/nope.yaml"], "config file not found: configs/nope.yaml"),
    (["synthesize", "--set", "paths.data_dir=EMPTY"], "no seed set in"),
    (["filter", "--set", "paths.data_dir=EMPTY"], "no seed set in"),
    (["filter", "--set", "paths.data_dir=SEEDED"], "run `oresearcher synthesize` first"),
    (["sft", "--set", "paths.data_dir=EMPTY"], "no filtered dataset"),
], ids=["bad-key", "bad-value", "missing-seed-file", "binary-seed-file", "missing-config", "no-seed-set",
        "filter-no-seed-set", "filter-no-traces", "sft-no-dataset"])
def test_user_errors_are_one_line_fast_and_start_no_server(args, named, binary_seed_file, tmp_path):
    seeded = tmp_path / "seeded" / "seeds"
    seeded.mkdir(parents=True)
    (seeded / "seeds.jsonl").write_text('{"id": "s1", "query": "Why is the sky blue?", "source": "x", "line": 1}\n')
    args = [a.replace("BINARY", binary_seed_file).replace("EMPTY", str(tmp_path / "empty"))
            .replace("SEEDED", str(seeded.parent)) for a in args]
    proc, seconds = cli(*args, home=tmp_path / "prefect")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not server_started(tmp_path / "prefect")
    assert seconds < 3.0, seconds  # ~0.3 s here: no server, no torch, no Prefect import before the checks


def test_debug_shows_the_traceback(tmp_path):
    proc, _ = cli("--debug", "ingest", "no/such/seeds.jsonl", home=tmp_path / "prefect")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "IngestError: no/such/seeds.jsonl" in proc.stderr
    proc, _ = cli("ingest", "no/such/seeds.jsonl", "--debug", home=tmp_path / "prefect")
    assert "Traceback" in proc.stderr


def test_default_config_is_found_from_any_directory(tmp_path):
    proc, _ = cli("search", "causes of the Black Death", "--num", "1", "--set",
                  f"research.tape.path={tmp_path / 'tape.sqlite'}", home=tmp_path / "prefect", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("1. [Black Death]"), proc.stderr


@pytest.mark.slow
def test_commands_that_need_no_server_start_none(tmp_path):
    home = tmp_path / "prefect"
    tape = ["--set", f"research.tape.path={tmp_path / 'tape.sqlite'}"]
    trace = tmp_path / "trace.txt"
    trace.write_text("<subtask_list>\n1. x\n</subtask_list>")
    for args in (["search", "printing press", *tape], ["crawl", "https://en.wikipedia.org/wiki/Black_Death", *tape],
                 ["trace", "check", str(trace)], ["model", "prepare"]):
        proc, _ = cli(*args, home=home)
        assert proc.returncode in (0, 1), proc.stderr  # `trace check` exits 1 on an invalid trace
        assert not server_started(home), args
    # The check can fail: a command that runs a flow does start one.
    proc, _ = cli("ingest", SEEDS, "--set", f"paths.data_dir={tmp_path / 'data'}", "--set",
                  f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", home=home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert server_started(home)


def test_cache_directory_comes_from_ORESEARCHER_CACHE(tmp_path):
    cache = tmp_path / "cache"
    proc, _ = cli("search", "printing press", "--num", "1", "--set", f"research.tape.path={tmp_path / 'tape.sqlite'}",
                  home=tmp_path / "prefect", ORESEARCHER_CACHE=str(cache))
    assert proc.returncode == 0 and proc.stdout.startswith("1. ["), proc.stderr
    (index,) = (cache / "search-index").iterdir()  # the index was built here, not in ~/.cache
    assert index.is_dir() and any(index.iterdir())


def test_model_prepare_prints_a_loadable_model_directory(tmp_path):
    proc, _ = cli("model", "prepare", home=tmp_path / "prefect")
    path = Path(proc.stdout.strip())
    assert proc.returncode == 0 and path.name.startswith("smollm2-135m-instruct-"), proc.stderr
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert list(path.glob("*.safetensors"))


@pytest.mark.slow
def test_ingest_then_run_recorded_then_run_replayed(tmp_path):
    """`ingest` and `run` from the command line; then a replay of the same run (`research.tape.mode=replay`)
    from the tape and the response cache alone, with the teacher gone, gives the same traces."""
    import json
    import shutil

    from teacher_api import SHAPE, TeacherAPI

    from models.tiny import build_tiny_model

    def settings(data: Path, *more: str) -> list[str]:
        return [x for o in (f"paths.data_dir={data}", f"research.tape.path={data / 'tape.sqlite'}",
                            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                            "synthesis.teacher.backend=openai", "synthesis.limit=2", "synthesis.prefill_think=false",
                            "synthesis.mlflow_traces=false", "filter.rules.min_report_chars=100", *SHAPE,
                            # the training stages on the tiny random-init policy, as briefly as they go
                            f"model.name={build_tiny_model()}", f"paths.checkpoints_dir={data / 'ckpt'}",
                            "sft.max_steps=1", "grpo.max_steps=1", "grpo.num_generations=2", "grpo.queries_per_step=1",
                            "rollout.max_new_tokens=16", "rollout.max_turns=1", "heldout.limit=1", *more)
                for x in ("--set", o)]

    recorded, replayed = tmp_path / "recorded", tmp_path / "replayed"
    proc, _ = cli("ingest", SEEDS, *settings(recorded), home=tmp_path / "prefect")
    assert proc.returncode == 0 and proc.stdout.startswith("seed version "), proc.stderr[-2000:]
    assert "accepted 58" in proc.stdout and (recorded / "seeds" / "seeds.jsonl").is_file()
    assert "telemetry" not in proc.stderr  # offline, the temporary server's telemetry would log an ERROR
    with TeacherAPI(latency_s=0.0) as api:
        proc, _ = cli("run", *settings(recorded, f"synthesis.teacher.base_url={api.base_url}"),
                      home=tmp_path / "prefect")
        assert proc.returncode == 0, proc.stderr[-3000:]
        dead_teacher = api.base_url
    replayed.mkdir()
    for name in ("tape.sqlite", "llm.sqlite"):  # what a DVC checkout of the recorded data version brings back
        shutil.copy(recorded / name, replayed / name)
    proc, _ = cli("run", *settings(replayed, f"synthesis.teacher.base_url={dead_teacher}",
                                   "research.tape.mode=replay"), home=tmp_path / "prefect")
    assert proc.returncode == 0, proc.stderr[-3000:]

    def traces(data: Path) -> list[tuple[str, str]]:
        lines = (data / "traces" / "traces.jsonl").read_text().splitlines()
        return sorted((r["seed_id"], r["trace"]) for r in map(json.loads, lines))

    assert len(traces(recorded)) == 2 and traces(replayed) == traces(recorded)
    assert all(json.loads(line)["usage"]["cache_hits"] == json.loads(line)["usage"]["calls"]
               for line in (replayed / "traces" / "traces.jsonl").read_text().splitlines())


def test_every_command_that_uses_settings_takes_config_and_overrides():
    from oresearcher.cli import build_parser

    parser = build_parser()
    for command in (["search", "q"], ["crawl", "u"], ["model", "prepare"], ["ingest", "f"], ["synthesize"], ["run"]):
        args = parser.parse_args([*command, "--config", "c.yaml", "--set", "a.b=1", "--set", "c=2"])
        assert (args.config, args.overrides) == ("c.yaml", ["a.b=1", "c=2"]), command


def test_sft_dry_run_prints_the_multi_gpu_launch_command_and_the_resolved_config(tmp_path):
    """`--dry-run` starts nothing (no server, no training, no data needed) and shows what would run."""
    import yaml

    proc, _ = cli("sft", "--config", "configs/paper.yaml", "--dry-run", "--set", f"paths.data_dir={tmp_path / 'none'}",
                  home=tmp_path / "prefect")
    assert proc.returncode == 0, proc.stderr
    head, _, config = proc.stdout.partition("# resolved config:\n")
    command = head.splitlines()[1].split()
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1].endswith("configs/accelerate/zero3.yaml")
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("-m", 3) + 1] == "oresearcher.sft" and "--dataset" in command
    resolved = yaml.safe_load(config)
    assert resolved["train"]["deepspeed"] == "zero3" and resolved["model"]["name"] == "Qwen/Qwen2.5-72B-Instruct"
    assert not server_started(tmp_path / "prefect") and not (tmp_path / "none").exists()


@pytest.mark.parametrize("command", [["heldout"], ["evaluate", "--queries", "heldout"]], ids=["heldout", "evaluate"])
def test_a_model_version_missing_from_the_registry_is_one_error_before_any_flow(command, tmp_path):
    """`--model models:/…/99` on a registry without it: one `error:` line naming the URI, fast, before a server or
    a flow starts, so no model (the base model, listed first, either) ran and no run was left behind."""
    from mlflow.tracking import MlflowClient

    from models.tiny import build_tiny_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc, seconds = cli(*command, "--model", build_tiny_model(), "--model", "models:/o-researcher-policy/99", "--set",
                        f"mlflow.tracking_uri={uri}", "--set", f"paths.data_dir={tmp_path / 'data'}",
                        home=tmp_path / "prefect")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "models:/o-researcher-policy/99 is not in the registry at sqlite:///" in lines[0]
    assert not server_started(tmp_path / "prefect")
    runs = [r for e in MlflowClient(uri).search_experiments() for r in MlflowClient(uri).search_runs([e.experiment_id])]
    assert runs == []

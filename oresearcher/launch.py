"""How a training stage runs: in the flow's own process, or as `accelerate launch` ranks under DeepSpeed.

    cmd = launch_command(cfg, "oresearcher.sft", ["--config", ..., "--output-dir", ...])
    result = run_launched(cfg, "oresearcher.sft", args)     # {"steps": ..., "ranks": [0, 1], ...}

A launched module's `main()` trains, then calls `report(result)`: every rank prints `TRAIN_RANK <rank>` (so the
flow can check that each one trained) and rank 0 prints `TRAIN_RESULT <json>`, which is what the flow gets back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from oresearcher.config import REPO_ROOT, Settings


def distributed(cfg: Settings) -> bool:
    return cfg.train.deepspeed != "none"


def launch_command(cfg: Settings, module: str, args: list[str]) -> list[str]:
    """`python -m <module> <args>`; when distributed, under `accelerate launch` with the DeepSpeed config of
    `train.deepspeed` and `train.num_processes` ranks per machine. On several machines, run it on each with
    accelerate's `--machine_rank` and `--main_process_ip` added."""
    entry = ["-m", module, *args]
    if not distributed(cfg):
        return [sys.executable, *entry]
    launcher = [sys.executable, "-m", "accelerate.commands.launch",
                "--config_file", str(REPO_ROOT / "configs" / "accelerate" / f"{cfg.train.deepspeed}.yaml"),
                "--num_processes", str(cfg.train.num_processes * cfg.train.num_machines),
                "--num_machines", str(cfg.train.num_machines), "--main_process_port", str(cfg.train.main_process_port)]
    return [*launcher, *entry]


def run_launched(cfg: Settings, module: str, args: list[str]) -> dict:
    """Run `launch_command` to the end; rank 0's result, with the ranks that trained."""
    cmd = launch_command(cfg, module, args)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    lines = proc.stdout.splitlines()
    ranks = sorted(int(line.split()[1]) for line in lines if line.startswith("TRAIN_RANK "))
    result = next((json.loads(line[len("TRAIN_RESULT "):]) for line in lines if line.startswith("TRAIN_RESULT ")),
                  None)
    if result is None:
        raise RuntimeError(f"{module} printed no result: {' '.join(cmd)}\n{proc.stdout[-2000:]}")
    return {**result, "ranks": ranks}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def report(result: dict) -> None:
    """What a launched process prints for `run_launched`: every rank its number, rank 0 the result."""
    print(f"TRAIN_RANK {rank()} steps {result.get('steps')}", flush=True)
    if rank() == 0:
        print("TRAIN_RESULT " + json.dumps({**result, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}),
              flush=True)


# ------------------------------------------------------------- the command line a launched stage takes, both ends

def stage_args(config_path: str, overrides: list[str], output_dir, run_id: str | None, **inputs: str) -> list[str]:
    """`--config C --set K=V ... --<input> V ... --output-dir D [--run-id R]` for `stage_parser` to read back."""
    return ["--config", str(config_path), *[x for o in overrides for x in ("--set", o)],
            *[x for k, v in inputs.items() for x in (f"--{k.replace('_', '-')}", str(v))],
            "--output-dir", str(output_dir), *(["--run-id", run_id] if run_id else [])]


def stage_parser(module: str, **inputs: str):
    """The parser of a launched stage: config, overrides, its inputs (name -> help), output dir, MLflow run."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m {module}")
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    for name, text in inputs.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=text)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--run-id", default=None, help="MLflow run to log train/* to (rank 0)")
    return p


def rank0_metrics(cfg: Settings, run_id: str | None) -> list:
    """The trainer callbacks of a launched process: `train/*` into `run_id`, from rank 0 only."""
    if not run_id or rank() != 0:
        return []
    from oresearcher.tracking import client
    from oresearcher.train_metrics import MlflowMetrics

    return [MlflowMetrics(client(cfg), run_id)]

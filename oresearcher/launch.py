"""How a training stage runs: in the flow's own process, or as `accelerate launch` ranks under DeepSpeed.

    cmd = launch_command(cfg, "oresearcher.sft", ["--config", ..., "--output-dir", ...])
    result = run_launched(cfg, "oresearcher.sft", args, out_dir)   # {"steps": ..., "ranks": [0, 1], ...}

A launched module's `main()` trains, then calls `report(result)`: every rank prints `TRAIN_RANK <rank>` (so the
flow can check that each one trained) and rank 0 prints `TRAIN_RESULT <json>`, which is what the flow gets back.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from oresearcher.config import REPO_ROOT, Settings

log = logging.getLogger(__name__)


class LaunchStalled(RuntimeError):
    """The launched ranks printed nothing for `train.launch_stall_timeout_s`; they were stopped."""


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


def run_launched(cfg: Settings, module: str, args: list[str], log_dir: Path) -> dict:
    """Run `launch_command` to the end; rank 0's result, with the ranks that trained.

    The ranks write to `log_dir/launch.out` and `launch.err` (files, not pipes: a pipe held open by a stray
    grandchild would keep us waiting after the launcher is gone; `tail -f` them to watch a long run). When they
    print nothing for `train.launch_stall_timeout_s` (a rank lost in a collective waits up to half an hour per
    call), each is asked for its Python stacks (`faulthandler`, armed by `stage_parser`), the whole process
    group is stopped and `LaunchStalled` says where they were. Whatever happens, nothing launched outlives us."""
    cmd = launch_command(cfg, module, args)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "launch.out", log_dir / "launch.err"
    env = dict(os.environ)
    if cfg.train.num_machines == 1:
        # One machine: gloo's peers meet on loopback rather than whatever address the hostname resolves to.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    log.info("launched %s; its ranks write to %s and %s", module, out_path, err_path)
    stall = cfg.train.launch_stall_timeout_s
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=err, text=True, env=env,
                                start_new_session=True)  # its own process group, so every rank can be stopped
        try:
            seen, quiet_since = -1, time.monotonic()
            while proc.poll() is None:
                time.sleep(0.5)
                size = out_path.stat().st_size + err_path.stat().st_size
                if size != seen:
                    seen, quiet_since = size, time.monotonic()
                elif stall and time.monotonic() - quiet_since > stall:
                    _signal_group(proc, signal.SIGUSR1)  # every rank dumps its stacks into launch.err
                    time.sleep(3)
                    raise LaunchStalled(f"{module}: no output for {stall:.0f}s (train.launch_stall_timeout_s); "
                                        f"stopped. Stacks and output: {err_path}\n{_tail(err_path, 6000)}")
        finally:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {proc.returncode}): {' '.join(cmd)}\n{_tail(err_path, 4000)}")
    lines = out_path.read_text().splitlines()
    ranks = sorted(int(line.split()[1]) for line in lines if line.startswith("TRAIN_RANK "))
    result = next((json.loads(line[len("TRAIN_RESULT "):]) for line in lines if line.startswith("TRAIN_RESULT ")),
                  None)
    if result is None:
        raise RuntimeError(f"{module} printed no result: {' '.join(cmd)}\n{_tail(out_path, 2000)}")
    return {**result, "ranks": ranks}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is already gone
        pass


def _tail(path: Path, chars: int) -> str:
    return path.read_text(errors="replace")[-chars:]


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
    """The parser of a launched stage: config, overrides, its inputs (name -> help), output dir, MLflow run.
    Every launched stage builds it first, so this is also where the stage arms its stack dump: SIGUSR1 makes a
    rank print every thread's stack to stderr (what `run_launched` asks of ranks that stalled)."""
    import argparse
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)

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

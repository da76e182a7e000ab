"""The launcher of distributed training stages (`oresearcher.launch.run_launched`) never waits forever: ranks
that go quiet are stopped with their stacks on record, and nothing it launched outlives it."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from oresearcher.config import load_config
from oresearcher.launch import LaunchStalled, run_launched

REPO = Path(__file__).resolve().parent.parent


def stage_module(tmp_path: Path, monkeypatch, body: str) -> str:
    """A launched stage of our own: `python -m fake_stage`, built like the real ones (`stage_parser` first)."""
    (tmp_path / "fake_stage.py").write_text(textwrap.dedent('''
        import subprocess, sys, time
        from oresearcher.launch import stage_parser, report

        def wait_for_peers():
            time.sleep(3600)

        def main():
            args = stage_parser("fake_stage").parse_args(sys.argv[1:])
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # holds our stdout
            open(args.output_dir + "/child.pid", "w").write(str(child.pid))
    ''') + textwrap.indent(textwrap.dedent(body), "    ") + "\nmain()\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return "fake_stage"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by init) is not alive
        return f.read().split()[2] != "Z"


def wait_gone(pid: int) -> bool:
    for _ in range(50):
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_quiet_launch_is_stopped_with_its_stacks_and_leaves_nothing_behind(tmp_path, monkeypatch):
    module = stage_module(tmp_path, monkeypatch, '''
        print("loading", flush=True)
        wait_for_peers()
    ''')
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), ["train.launch_stall_timeout_s=2"])
    with pytest.raises(LaunchStalled) as err:
        run_launched(cfg, module, ["--config", "x", "--output-dir", str(tmp_path)], tmp_path)
    assert "no output for 2s" in str(err.value)
    assert "wait_for_peers" in str(err.value)  # the rank's own stack, dumped before it was stopped
    assert "loading" in (tmp_path / "launch.out").read_text()
    assert wait_gone(int((tmp_path / "child.pid").read_text()))


def test_a_finished_launch_returns_though_a_stray_child_holds_its_output(tmp_path, monkeypatch):
    module = stage_module(tmp_path, monkeypatch, '''
        report({"steps": 3})
    ''')
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), ["train.launch_stall_timeout_s=600"])
    started = time.monotonic()
    out = run_launched(cfg, module, ["--config", "x", "--output-dir", str(tmp_path)], tmp_path)
    assert out["steps"] == 3 and out["ranks"] == [0]
    assert time.monotonic() - started < 300  # not the stray child's hour, nor the stall timeout
    assert wait_gone(int((tmp_path / "child.pid").read_text()))

"""`oresearcher ui`: the Prefect server and the MLflow UI, up together on localhost, down together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_starts_prefect_and_mlflow_and_stops_both(tmp_path):
    pp, mp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "oresearcher.cli", "ui", "--prefect-port", str(pp), "--mlflow-port",
                             str(mp), "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops both" in line:
                break
        out = "".join(lines)
        assert f"Prefect UI: http://127.0.0.1:{pp}" in out and f"MLflow UI: http://127.0.0.1:{mp}" in out, \
            out + proc.stderr.read() if proc.poll() is not None else out
        assert httpx.get(f"http://127.0.0.1:{pp}/api/health", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{mp}/", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for port in (pp, mp):  # both servers went down with it
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                except httpx.HTTPError:
                    break
                assert time.monotonic() < deadline, f"port {port} still answers"
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()

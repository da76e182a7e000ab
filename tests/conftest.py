"""Shared test setup: offline, quiet, with the project's derived caches (converted model, search index) reused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


@pytest.fixture
def settings_factory(tmp_path):
    """Settings from configs/tiny.yaml whose writable paths (tape, MLflow) live in a temp dir."""
    from oresearcher.config import load_config

    def make(*overrides: str):
        base = [f"research.tape.path={tmp_path / 'tape.sqlite'}",
                f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
        return load_config(REPO / "configs" / "tiny.yaml", [*base, *overrides])

    return make


def dvc(*args, cwd):
    import subprocess

    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def dvc_repo(tmp_path):
    """A throwaway git + DVC repository with `data/` and a local remote in `tmp_path/remote`."""
    import subprocess

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo)
    return repo

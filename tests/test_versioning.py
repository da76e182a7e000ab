"""DVC versioning of the data tree: the mutable stores stay out of it, each dataset has a DVC digest, a run's
inputs come back byte for byte from the remote alone, and a fresh clone's DVC commands succeed."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import dvc

from oresearcher.versioning import (
    VersioningError,
    dataset_digest,
    manifest,
    restore,
    restore_run,
    version_data,
)

REPO = Path(__file__).resolve().parent.parent


def fill(data: Path) -> dict[str, bytes]:
    """A small data tree: two datasets, a file dataset, and a store being written (WAL, connection open)."""
    files = {"seeds/seeds.jsonl": b'{"id": "s1", "query": "Why?"}\n',
             "filtered/v1/traces.jsonl": "\u4e2d\u6587 trace\n".encode(),
             "filtered/v1/gate.json": b'{"status": "accepted"}',
             "eval/reference/heldout-abc.jsonl": b'{"id": "s1", "report": "r"}\n'}
    for rel, body in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    return files


def test_versions_leave_the_stores_out_and_digest_each_dataset_as_dvc_does(dvc_repo, tmp_path):
    data = dvc_repo / "data"
    files = fill(data)
    conn = sqlite3.connect(data / "llm.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    version = version_data(data)
    conn.close()
    assert version.endswith(".dir")
    assert yaml.safe_load((dvc_repo / "data.dvc").read_text())["outs"][0]["md5"] == version
    entries = manifest(data, version)
    assert set(entries) == set(files)  # no llm.sqlite, no -wal/-shm
    # A dataset's digest is what DVC gives that folder alone, and does not move when the rest of the tree does.
    other = tmp_path / "other"
    shutil.copytree(data / "filtered" / "v1", other / "v1")
    dvc("init", "-q", "--no-scm", cwd=other)
    dvc("add", "-q", "v1", cwd=other)
    assert dataset_digest(entries, "filtered/v1") + ".dir" == yaml.safe_load((other / "v1.dvc").read_text())["outs"][0]["md5"]
    assert dataset_digest(entries, "seeds/seeds.jsonl") == entries["seeds/seeds.jsonl"]
    (data / "seeds" / "seeds.jsonl").write_bytes(b'{"id": "s2", "query": "How?"}\n')
    later = version_data(data)
    assert later != version
    assert dataset_digest(manifest(data, later), "filtered/v1") == dataset_digest(entries, "filtered/v1")
    assert dataset_digest(manifest(data, later), "seeds/seeds.jsonl") != entries["seeds/seeds.jsonl"]


def test_restore_reads_the_remote_alone_byte_for_byte(dvc_repo, tmp_path):
    data = dvc_repo / "data"
    files = fill(data)
    version = version_data(data)
    # The workspace moves on and the checkout's cache is gone: only the remote holds that version.
    (data / "filtered" / "v1" / "gate.json").write_bytes(b'{"status": "rejected"}')
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    out = restore(version, ["filtered/v1", "seeds/seeds.jsonl"], str(tmp_path / "remote"), tmp_path / "restored")
    assert [(r.relpath, r.files) for r in out] == [("filtered/v1", 2), ("seeds/seeds.jsonl", 1)]
    for rel in ("filtered/v1/traces.jsonl", "filtered/v1/gate.json", "seeds/seeds.jsonl"):
        assert (tmp_path / "restored" / rel).read_bytes() == files[rel]
    assert not (tmp_path / "restored" / "eval").exists()  # only what was asked for
    with pytest.raises(VersioningError, match="exists"):
        restore(version, ["seeds/seeds.jsonl"], str(tmp_path / "remote"), tmp_path / "restored")


def test_a_run_records_its_inputs_and_restore_brings_them_back(dvc_repo, tmp_path, settings_factory):
    """`record_inputs` on a real MLflow store (the Dataset column), then `restore_run` of the parent run."""
    from mlflow import MlflowClient

    from tasks.versioning import record_inputs

    data = dvc_repo / "data"
    files = fill(data)
    cfg = settings_factory(f"paths.data_dir={data}", "dvc.remote=../remote")  # relative to the DVC repository
    client = MlflowClient(cfg.mlflow.resolved_uri())
    exp = client.create_experiment("t")
    parent = client.create_run(exp).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    version = record_inputs.fn(cfg, client, child, [("filtered-v1", data / "filtered" / "v1"),
                                                    ("reference", data / "eval" / "reference" / "heldout-abc.jsonl")])
    run = client.get_run(child)
    assert run.data.tags["dvc.data_version"] == version
    assert run.data.tags["dvc.remote"] == str((tmp_path / "remote").resolve())
    inputs = {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs}
    assert inputs["filtered-v1"][0] == dataset_digest(manifest(data, version), "filtered/v1")
    assert inputs["filtered-v1"][1]["dvc.path"] == "filtered/v1" and inputs["reference"][1]["dvc.version"] == version

    (data / "filtered" / "v1" / "traces.jsonl").write_bytes(b"changed since\n")
    assert version_data(data, "../remote") != version  # a newer version, in data.dvc and in the remote
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    restored = restore_run(client, parent, tmp_path / "back")  # the parent read nothing: its child's inputs
    assert sorted(d.relpath for d, _ in restored) == ["eval/reference/heldout-abc.jsonl", "filtered/v1"]
    for rel in ("filtered/v1/traces.jsonl", "filtered/v1/gate.json", "eval/reference/heldout-abc.jsonl"):
        assert (tmp_path / "back" / rel).read_bytes() == files[rel]
    with pytest.raises(VersioningError, match="recorded no versioned data-tree inputs"):
        restore_run(client, client.create_run(exp).info.run_id, tmp_path / "none")


@pytest.mark.parametrize("store", ["missing", "existing"])
def test_restore_of_an_unknown_run_or_store_is_one_line(tmp_path, store):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if store == "existing":
        MlflowClient(uri).search_experiments()  # creates the store's tables
    proc = subprocess.run([sys.executable, "-m", "oresearcher.cli", "restore", "0123abcd", "--set",
                           f"mlflow.tracking_uri={uri}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    named = "error: no MLflow run 0123abcd" if store == "existing" else "error: no MLflow store at"
    assert len(lines) == 1 and lines[0].startswith(named), proc.stderr
    assert not (tmp_path / "restored").exists()


def test_a_fresh_clone_dvc_commands_succeed(tmp_path):
    """`data.dvc` in git names the empty data tree, whose one object is committed in the default remote."""
    from checkout import fresh_checkout

    clone = fresh_checkout(tmp_path / "clone")
    for args in (["pull"], ["status"], ["checkout"], ["data", "status"], ["fetch"]):
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert (clone / "data").is_dir()

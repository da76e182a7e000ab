"""`retrain`: seed files dropped in the inbox join the seed set as a new version (old seeds plus new ones,
de-duplicated); a file is taken once; with nothing new, nothing happens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_retrain_adds_new_inbox_seeds_to_the_old_ones_once(prefect_server, tmp_path):
    from flows.ingest import ingest
    from flows.retrain import retrain
    from oresearcher.seeds import load_seeds

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ov = [f"paths.data_dir={tmp_path / 'data'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
          f"retrain.inbox={inbox}"]
    config = str(REPO / "configs" / "tiny.yaml")
    first = ingest(paths=[str(REPO / "seeds" / "default.jsonl")], config_path=config, overrides=ov)
    _, old = load_seeds(tmp_path / "data")
    new_queries = ["How did the invention of the telegraph change newspaper reporting in the 19th century?",
                   "What role did monasteries play in preserving classical texts during the early Middle Ages?"]
    (inbox / "week-48.jsonl").write_text(
        "".join(json.dumps({"query": q}) + "\n" for q in new_queries)
        + json.dumps({"query": old[0].query}) + "\n")  # already a seed: de-duplicated, not added twice
    (inbox / "notes.md").write_text("not a seed file")

    r = asyncio.run(retrain(config_path=config, overrides=ov, stop_after="ingest"))
    version, seeds = load_seeds(tmp_path / "data")
    assert r["status"] == "ingested" and version == r["seeds"]["seed_version"] != first["seed_version"]
    queries = [s.query for s in seeds]
    assert queries[: len(old)] == [s.query for s in old]  # every old seed, in order
    assert queries[len(old):] == new_queries and len(set(queries)) == len(queries)
    assert r["new_files"] == [str(inbox / "week-48.jsonl")]

    again = asyncio.run(retrain(config_path=config, overrides=ov, stop_after="ingest"))
    assert again["status"] == "nothing_new" and load_seeds(tmp_path / "data")[0] == version

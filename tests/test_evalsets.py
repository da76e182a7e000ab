"""The evaluation data the project carries: complete, byte-identical to its source, read alike plain or gzipped."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from oresearcher import evalsets

README = Path(evalsets.__file__).with_name("README.md").read_text()
# | `drb/query.jsonl` | ... | 100 | `sha256` |
ROWS = re.findall(r"^\| `([\w/]+\.jsonl)(?:\.gz)?` \|[^|]*\| ([\d,]+) \| `([0-9a-f]{64})` \|$", README, re.M)


def test_readme_lists_every_file_shipped():
    shipped = {str(p.relative_to(evalsets.HERE)).removesuffix(".gz") for p in evalsets.HERE.rglob("*.jsonl*")}
    assert shipped == {name for name, _, _ in ROWS} and len(ROWS) == 5


@pytest.mark.parametrize(("name", "rows", "sha256"), ROWS)
def test_each_file_matches_its_documented_rows_and_hash(name, rows, sha256):
    text = evalsets.read_text(name)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == sha256
    assert sum(1 for _ in evalsets.read_jsonl(name)) == int(rows.replace(",", ""))


def test_override_folder_with_plain_and_gzipped_files(tmp_path, monkeypatch):
    (tmp_path / "drb").mkdir()
    (tmp_path / "drb" / "query.jsonl").write_text('{"id": 1, "prompt": "plain"}\n')
    (tmp_path / "drb" / "criteria.jsonl.gz").write_bytes(gzip.compress(b'{"id": 1, "prompt": "zipped"}\n'))
    monkeypatch.setenv("ORESEARCHER_EVAL_DATA", str(tmp_path))
    assert [r["prompt"] for r in evalsets.read_jsonl("drb/query.jsonl")] == ["plain"]
    assert [r["prompt"] for r in evalsets.read_jsonl("drb/criteria.jsonl")] == ["zipped"]
    with pytest.raises(evalsets.EvalDataError, match=r"drg/queries.jsonl not found under .*ORESEARCHER_EVAL_DATA"):
        evalsets.path("drg/queries.jsonl")


def test_ingest_reports_a_missing_evaluation_set_as_an_ingest_error(tmp_path, monkeypatch):
    from oresearcher.seeds import IngestError, load_eval_queries

    monkeypatch.setenv("ORESEARCHER_EVAL_DATA", str(tmp_path))
    with pytest.raises(IngestError, match="drb/query.jsonl not found"):
        load_eval_queries(["drb"])

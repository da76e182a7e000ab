"""Seed ingestion: every kind of bad input is a reported rejection or a clear error; contamination is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oresearcher import evalsets
from oresearcher.config import load_config
from oresearcher.seeds import IngestError, ingest_files, load_seeds, write_seed_version

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg():
    return load_config(REPO / "configs" / "tiny.yaml").ingest


def reasons(result) -> dict[int, str]:
    return {r.line: r.reason for r in result.rejections}


def test_default_seed_set_is_clean_and_large_enough(cfg):
    result = ingest_files([REPO / "seeds" / "default.jsonl"], cfg)
    assert len(result.seeds) >= 50 and not result.rejections and not result.contamination


def test_bad_records_are_rejected_with_line_and_reason(tmp_path, cfg):
    path = tmp_path / "seeds.jsonl"
    good = "How did the printing press change the spread of ideas in Europe?"
    path.write_bytes("\n".join([
        json.dumps({"query": good}),
        json.dumps({"query": "   "}),
        json.dumps({"query": "short?"}),
        json.dumps({"query": "x" * 3000}),
        "{not json",
        json.dumps({"title": "no query field here"}),
        json.dumps({"query": good.upper()}),                      # exact duplicate after normalisation
        json.dumps({"query": good.replace("of ideas", "of new ideas")}),  # near duplicate
        json.dumps({"prompt": "What were the economic effects of the Black Death on wages?"}),
    ]).encode() + b"\n" + b'{"query": "caf\xe9 culture in Vienna and its history"}\n')
    result = ingest_files([path], cfg)
    assert [s.line for s in result.seeds] == [1, 9]
    assert reasons(result) == {2: "empty", 3: "too_short", 4: "too_long", 5: "not_json", 6: "no_query_field",
                               7: "duplicate", 8: "near_duplicate", 10: "undecodable"}
    assert all(r.source == str(path) for r in result.rejections)
    assert result.counts()["rejected"] == 8 and result.counts()["read"] == 7  # 3 lines never became records
    write_seed_version(result, tmp_path / "data", [path])  # the report a user reads: every rejection, located
    report = json.loads((tmp_path / "data" / "seeds" / "report.json").read_text())
    assert {(r["source"], r["line"], r["reason"]) for r in report["rejections"]} == \
        {(str(path), line, reason) for line, reason in reasons(result).items()}


def test_byte_order_mark_is_ignored(tmp_path, cfg):
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfquery,source\nWhat caused the fall of the Roman Republic?,x\n")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"query": "How do coral reefs form and grow over time?"}\n')
    result = ingest_files([tmp_path / "excel.csv", tmp_path / "bom.jsonl"], cfg)
    assert len(result.seeds) == 2 and not result.rejections


def test_csv_parquet_and_text_inputs(tmp_path, cfg):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.csv").write_text('id,question\n1,"What caused the fall of the Roman Republic?"\n2,""\n')
    pq.write_table(pa.table({"query": ["How do coral reefs form and grow over time?", None]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("How did the Meiji Restoration modernise Japan?\n\nWhy do volcanoes erupt?\n")
    result = ingest_files([tmp_path / "a.csv", tmp_path / "b.parquet", tmp_path / "c.txt"], cfg)
    assert len(result.seeds) == 4
    assert [(r.source.rsplit("/", 1)[1], r.line, r.reason) for r in result.rejections] == [
        ("a.csv", 3, "empty"), ("b.parquet", 2, "empty")]


def test_topics_are_kept_from_every_format_that_has_them(tmp_path, cfg):
    """The review sample is stratified by topic: a seed keeps the topic (or category, domain) its file gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text(json.dumps({"query": "What caused the fall of the Roman Republic?",
                                                  "topic": " Ancient  History "}) + "\n")
    (tmp_path / "b.csv").write_text('question,category\n"How do coral reefs form and grow over time?",Biology\n')
    pq.write_table(pa.table({"query": ["How did the Meiji Restoration modernise Japan?"], "domain": ["Japan"]}),
                   tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("Why do volcanoes erupt on some islands?\n")
    result = ingest_files([tmp_path / n for n in ("a.jsonl", "b.csv", "c.parquet", "d.txt")], cfg)
    assert [s.topic for s in result.seeds] == ["Ancient History", "Biology", "Japan", ""]
    default = ingest_files([REPO / "seeds" / "default.jsonl"], cfg)
    assert all(s.topic for s in default.seeds) and len({s.topic for s in default.seeds}) >= 5


@pytest.mark.parametrize("name,content,message", [
    ("bad.csv", "query\n\"unterminated\n", "not valid CSV"),
    ("bad.parquet", "not parquet at all", "not a readable Parquet"),
    ("nocol.csv", "a,b\n1,2\n", "no query column"),
])
def test_unreadable_files_are_clear_errors(tmp_path, cfg, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(IngestError, match=message):
        ingest_files([tmp_path / name], cfg)
    with pytest.raises(IngestError, match="no such file"):
        ingest_files([tmp_path / "missing.jsonl"], cfg)


def test_planted_eval_prompts_are_flagged_as_contamination(tmp_path, cfg):
    drb = list(evalsets.read_jsonl("drb/query.jsonl"))
    drg = list(evalsets.read_jsonl("drg/queries.jsonl"))
    english = next(r for r in drb if r["language"] == "en")
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(json.dumps({"query": q}) for q in [
        english["prompt"],                                   # verbatim DRB prompt
        drb[-1]["prompt"].lower().rstrip(".") + ", please",  # a lightly edited copy of another
        drg[5]["query"] + " ?",                              # a DeepResearchGym query
        "How did the printing press change the spread of ideas in Europe?",
    ]) + "\n")
    result = ingest_files([path], cfg)
    assert [s.line for s in result.seeds] == [4]
    flagged = {c["seed"]["line"]: c["matches"] for c in result.contamination}
    assert flagged == {1: f"drb:{english['id']}", 2: f"drb:{drb[-1]['id']}", 3: f"drg:{drg[5]['id']}"}
    keep = ingest_files([path], cfg.model_copy(update={"drop_contaminated": False}))
    assert len(keep.seeds) == 4 and len(keep.contamination) == 3


def test_a_failed_ingest_leaves_the_previous_version_untouched(tmp_path, cfg):
    first = ingest_files([REPO / "seeds" / "default.jsonl"], cfg)
    version = write_seed_version(first, tmp_path, [REPO / "seeds" / "default.jsonl"])
    before = (tmp_path / "seeds" / "seeds.jsonl").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "tiny"}\n')
    with pytest.raises(IngestError, match="nothing written"):
        write_seed_version(ingest_files([bad], cfg), tmp_path, [bad])
    assert (tmp_path / "seeds" / "seeds.jsonl").read_bytes() == before
    assert load_seeds(tmp_path)[0] == version and len(load_seeds(tmp_path)[1]) == len(first.seeds)
    assert not list((tmp_path / "seeds").glob("*.tmp"))


def test_the_heldout_split_never_becomes_a_training_seed(tmp_path, cfg):
    """The default seeds hold none of the held-out queries, and a look-alike of one is kept out like an evaluation
    query: nothing trains on what the held-out table measures."""
    from oresearcher.seeds import heldout_queries

    held = heldout_queries(cfg)
    assert len(held) == 8
    default = ingest_files([REPO / "seeds" / "default.jsonl"], cfg)
    assert not {s.query for s in default.seeds} & set(held) and not default.contamination
    (tmp_path / "mine.jsonl").write_text(json.dumps({"query": held[0].replace("?", " today?")}) + "\n")
    result = ingest_files([tmp_path / "mine.jsonl"], cfg)
    assert not result.seeds and result.contamination[0]["matches"] == "heldout:1"

"""Evaluation (issue 11): RACE and FACT formulas against values computed by hand, the rubric look-up and its
fallbacks, FACT's exclusions, intervals, promotion, and the `evaluate` flow end to end with a stand-in judge and
policy served over HTTP (a paid API's test double); its HTML report in real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from oresearcher import evaluation as ev
from oresearcher import grammar as g

REPO = Path(__file__).resolve().parent.parent
ECFG = SimpleNamespace(weight_samples=5, n_criteria=3, max_report_chars=6000, race="pairwise", max_statements=20,
                       page_chars=4000, max_key_points=10, bootstrap=500, confidence=0.95)


# -- RACE formulas, by hand ----------------------------------------------------------------------------------------


def test_dimension_score_is_the_criterion_weighted_mean_of_what_the_judge_scored():
    crit = [("a", 0.5), ("b", 0.3), ("c", 0.2)]
    assert ev.dimension_score(crit, {1: 8, 2: 6, 3: 5}) == pytest.approx(0.5 * 8 + 0.3 * 6 + 0.2 * 5)  # 6.8
    # criterion 3 unscored: the weights of the scored ones renormalise, (4 + 1.8) / 0.8
    assert ev.dimension_score(crit, {1: 8, 2: 6}) == pytest.approx(7.25)
    assert ev.dimension_score(crit, {}) is None


def test_overall_and_task_score_follow_the_race_formula():
    w = {"comprehensiveness": 0.3, "insight": 0.36, "instruction_following": 0.2, "readability": 0.14}
    target = {"comprehensiveness": 8.0, "insight": 5.0, "instruction_following": 7.0, "readability": 9.0}
    reference = {"comprehensiveness": 6.0, "insight": 6.0, "instruction_following": 6.0, "readability": 6.0}
    s_t = ev.overall_score(w, target)
    assert s_t == pytest.approx(0.3 * 8 + 0.36 * 5 + 0.2 * 7 + 0.14 * 9)  # 6.86
    assert ev.overall_score(w, reference) == pytest.approx(6.0)
    assert ev.relative_score(s_t, 6.0) == pytest.approx(6.86 / 12.86)
    assert ev.relative_score(0.0, 0.0) == 0.5  # nothing on either side: parity, not a division by zero
    # a dimension the judge could not score drops out and the others' weights renormalise
    assert ev.overall_score(w, {**target, "insight": None}) == pytest.approx((2.4 + 1.4 + 1.26) / 0.64)


def test_weight_lookup_official_then_judge_samples_then_equal():
    official = ev.official_rubrics()
    task = next(t for t in ev.query_set("drb-en") if t.id == "drb-51")
    rubric = official[task.query.strip()]
    assert rubric.source == {"weights": "official", "criteria": "official"}
    assert sum(rubric.weights.values()) == pytest.approx(1.0)
    assert all(len(rubric.criteria[d]) > 0 for d in ev.DIMENSIONS)
    # the official rubric needs no judge at all: a None client would fail on any call
    assert asyncio.run(ev.rubric_for(task, None, ECFG, official)) is rubric
    # judge samples: the mean of those that parse, renormalised; none parse: equal weights
    a = {"comprehensiveness": 0.4, "insight": 0.4, "instruction_following": 0.2, "readability": 0.0}
    b = {"comprehensiveness": 0.2, "insight": 0.4, "instruction_following": 0.2, "readability": 0.2}
    weights, source = ev.average_weights([a, None, b])
    assert source == "generated"
    assert weights == pytest.approx({"comprehensiveness": 0.3, "insight": 0.4, "instruction_following": 0.2,
                                     "readability": 0.1})
    assert ev.average_weights([None, None]) == ({d: 0.25 for d in ev.DIMENSIONS}, "default")
    assert g.parse_weights("comprehensiveness: 30\ninsight: 30\ninstruction_following: 30\n", ev.DIMENSIONS) is None
    assert g.parse_weights("comprehensiveness: 2\ninsight: 1\ninstruction_following: 1\nreadability: 0\n",
                           ev.DIMENSIONS) == {"comprehensiveness": 0.5, "insight": 0.25,
                                              "instruction_following": 0.25, "readability": 0.0}


def test_race_shortcuts_need_no_judge():
    rubric = ev.Rubric({d: 0.25 for d in ev.DIMENSIONS}, {d: [("x", 1.0)] for d in ev.DIMENSIONS})
    task = ev.EvalTask("t", "q")
    both_empty = asyncio.run(ev.race_scores(None, ECFG, task, rubric, "", ""))
    assert both_empty.score == 0.5 and both_empty.calls == 0
    # citations are stripped before judging: these two reports are the same report
    same = asyncio.run(ev.race_scores(None, ECFG, task, rubric, "Claim [1].\n\n## References\n[1]. https://a.org - A",
                                      "Claim.\n"))
    assert same.score == 0.5 and same.calls == 0
    nothing = asyncio.run(ev.race_scores(None, ECFG, task, rubric, "", None))  # pointwise, empty target
    assert nothing.score == 0.0


def test_race_side_by_side_and_pointwise_through_a_judge():
    """The stand-in judge gives a report one point per 100 characters on every criterion: a 500-character target
    against a 250-character reference is S = 5 vs 2, task score 5/7; pointwise, 5/10."""
    from teacher_api import TeacherAPI

    from models.llm import make_client
    from oresearcher.config import ModelConfig

    rubric = ev.official_rubrics()[ev.query_set("drb-en")[0].query.strip()]
    task = ev.query_set("drb-en")[0]
    target, reference = "x" * 500, "y" * 250
    with TeacherAPI(latency_s=0.0) as api:
        client = make_client(ModelConfig(name="judge", backend="openai", base_url=api.base_url, guided=False))

        async def go():
            try:
                return (await ev.race_scores(client, ECFG, task, rubric, target, reference),
                        await ev.race_scores(client, ECFG, task, rubric, target, None),
                        await ev.race_scores(client, ECFG, task, rubric, "", reference))
            finally:
                await client.aclose()

        pair, point, empty = asyncio.run(go())
    assert pair.calls == 4 and pair.unscored == 0  # one call per dimension, every criterion scored
    assert pair.overall_target == pytest.approx(5.0) and pair.overall_reference == pytest.approx(2.0)
    assert pair.score == pytest.approx(5 / 7)
    assert point.score == pytest.approx(0.5) and point.overall_reference is None
    # an empty target scores 0 without a call; the reference is graded alone: task score 0
    assert empty.score == 0.0 and empty.calls == 4 and empty.overall_reference == pytest.approx(2.0)


def test_criteria_scores_parse_only_on_scale_and_in_range():
    text = "1. target: 7, reference: 5\n2. target: 11, reference: 3\n3. score: 4\n4. target: 2, reference: 2\n"
    assert g.parse_criteria_scores(text, 3) == {1: (7, 5), 3: (4, None)}  # 11 is off the scale, 4 > n


# -- FACT ----------------------------------------------------------------------------------------------------------

REPORT = """## Causes
According to [1], the war began in 1914. Trade grew fast [2]. Trade grew fast [2]. A claim with no source [7].

## 影响
战争改变了欧洲[3]。经济也受到影响[1, 2]。

## References
[1]. https://a.org/x - A
[2]. https://b.org/y - B
[3]. https://c.org/z - C
"""


def test_fact_pairs_take_the_whole_sentence_in_either_language_once_per_url():
    pairs, dropped = ev.fact_pairs(REPORT)
    assert pairs == [("The war began in 1914.", "https://a.org/x"), ("Trade grew fast.", "https://b.org/y"),
                     ("战争改变了欧洲。", "https://c.org/z"), ("经济也受到影响。", "https://a.org/x"),
                     ("经济也受到影响。", "https://b.org/y")]
    assert dropped == 1  # [7] names no reference: no URL to check it against


def test_fact_rates_exclude_unknown_and_unfetched_and_reports_citing_nothing():
    labels = ["supported", "unsupported", "unknown", None, "unfetched", "supported"]
    assert ev.citation_accuracy(labels) == pytest.approx(2 / 3)
    assert ev.citation_accuracy(["unknown", None]) is None
    # effective citations: supported per citing report; the report with no statements is not in the denominator
    assert ev.effective_citations([["supported", "supported", "unsupported"], ["unsupported"], []]) == 1.0
    assert ev.key_point_rates(["supported", "contradicted", "absent", "supported"]) == (0.5, 0.25)


def test_bootstrap_interval_and_promotion():
    assert ev.bootstrap_ci([0.6] * 5) == (0.6, 0.6)
    values = [0.2, 0.4, 0.6, 0.8, 1.0]
    lo, hi = ev.bootstrap_ci(values, 2000, 0.95, seed=1)
    assert lo < 0.6 < hi and ev.bootstrap_ci(values, 2000, 0.95, seed=1) == (lo, hi)
    better = [{"race": x} for x in (0.7, 0.8, 0.75, 0.9)]
    worse = [{"race": x} for x in (0.5, 0.55, 0.5, 0.6)]
    won = ev.promotion(better, worse, "race", ECFG)
    assert won["promote"] and won["difference"] == pytest.approx(0.25) and won["ci_lo"] > 0
    tie = ev.promotion(better, better, "race", ECFG)
    assert not tie["promote"] and tie["difference"] == 0.0


def test_summary_pools_fact_and_scales_race_with_intervals():
    dims = {d: 0.5 for d in ev.DIMENSIONS}
    rows = [{"race": 0.75, "race_dimensions": dims, "race_unscored": 0, "fact_pairs": 3,
             "fact_labels": ["supported", "supported", "unsupported"], "kpr": 0.5, "kpc": 0.0, "valid": 1.0},
            {"race": 0.25, "race_dimensions": dims, "race_unscored": 1, "fact_pairs": 1, "fact_labels": ["unknown"],
             "kpr": 1.0, "kpc": 0.5, "valid": 0.0},
            {"race": 0.5, "race_dimensions": dims, "race_unscored": 0, "fact_pairs": 0, "fact_labels": [],
             "kpr": 0.0, "kpc": 0.0, "valid": 0.0}]
    m = ev.summarize(rows, ECFG)
    assert m["race"] == pytest.approx(50.0) and m["race_ci_lo"] <= 50.0 <= m["race_ci_hi"]
    assert m["fact_accuracy"] == pytest.approx(2 / 3)  # pooled: 2 supported, 1 unsupported, 'unknown' out
    assert m["fact_effective_citations"] == pytest.approx(1.0)  # 2 supported over the 2 reports that cite
    assert m["kpr"] == pytest.approx(50.0) and m["kpc"] == pytest.approx(50 / 3)
    assert m["valid"] == pytest.approx(1 / 3) and m["race_unscored"] == 1
    assert all(f"{k}_ci_lo" in m for k in ("race", "fact_accuracy", "fact_effective_citations", "kpr", "valid"))


def test_query_sets(tmp_path):
    drb = ev.query_set("drb", limit=4)
    assert [t.language for t in drb] == ["en", "zh", "en", "zh"]
    drg = ev.query_set("drg", limit=2)
    assert all(t.key_points for t in drg)
    heldout = ev.query_set("heldout", heldout=REPO / "seeds" / "heldout.jsonl")
    assert len(heldout) == 8 and heldout[0].language == "en"
    with pytest.raises(ev.QuerySetError, match="nonsense"):
        ev.query_set("nonsense")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ev.QuerySetError, match="no queries"):
        ev.query_set(str(empty))
    mine = tmp_path / "mine.txt"
    mine.write_text("How did the printing press change Europe?\n第一次世界大战的主要原因是什么？\n")
    assert [t.language for t in ev.query_set(str(mine))] == ["en", "zh"]  # any seed file, any format ingest reads


# -- the flow, end to end --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _overrides(tmp_path, judge_url: str, reference_url: str) -> list[str]:
    return [f"paths.data_dir={tmp_path / 'data'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"research.tape.path={tmp_path / 'data' / 'tape.sqlite'}", "filter.judge.model.backend=openai",
            f"filter.judge.model.base_url={judge_url}", "filter.judge.model.guided=false",
            "filter.judge.model.name=judge", f"evaluate.reference={reference_url}#reference",
            "evaluate.bootstrap=200"]


@pytest.mark.slow
def test_evaluate_flow_scores_logs_freezes_references_and_reruns_from_cache(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient
    from teacher_api import TeacherAPI

    from flows.evaluate import evaluate

    # the policy's reports hold 6 more findings than the reference system's: longer reports win RACE in the stand-in
    with TeacherAPI(latency_s=0.0, findings=6) as api, TeacherAPI(latency_s=0.0, tool_steps=1) as ref:
        ov = _overrides(tmp_path, api.base_url, ref.base_url)
        run = lambda: asyncio.run(evaluate(config_path=str(REPO / "configs" / "tiny.yaml"), overrides=ov,  # noqa: E731
                                           models=[f"{api.base_url}#policy"], labels=["policy"], queries="drb",
                                           limit=4))
        first = run()
        ref_calls, judge_calls = ref.stats()["requests"], api.stats()["requests"]
        frozen = list((tmp_path / "data" / "eval" / "reference").glob("drb-*.jsonl"))
        assert len(frozen) == 1 and len(frozen[0].read_text().splitlines()) == 4
        second = run()
        assert api.stats()["requests"] == judge_calls  # every policy and judge call answered by the cache
        (tmp_path / "data" / "llm.sqlite").unlink()  # without the cache, only the frozen file keeps the references
        third = run()
        assert ref.stats()["requests"] == ref_calls  # frozen: the reference system is never asked again
        assert api.stats()["requests"] > judge_calls and third["summaries"] == first["summaries"]
    m = first["summaries"]["policy"]
    assert first["tasks"] == 4 and m["race"] > 50 and m["race_ci_lo"] <= m["race"] <= m["race_ci_hi"]
    assert 0 < m["fact_accuracy"] < 1 and m["fact_statements"] > 0 and m["valid"] == 1.0
    assert second["summaries"] == first["summaries"]  # the judge's calls came from the cache: the same numbers
    assert "RACE" in first["table"] and "[" in first["table"]
    artifacts = asyncio.run(_artifacts())
    assert artifacts["evaluation-progress-drb"] == 100.0 and "evaluation on drb" in artifacts["evaluation-drb"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("o-researcher-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.label = 'policy'")
    assert len(runs) == 3  # one per evaluation, each a child of its evaluation's summary run
    r = next(x for x in runs if x.data.tags["mlflow.parentRunId"] == first["run_id"])
    assert r.data.metrics["eval/drb/race"] == pytest.approx(m["race"])
    assert {"eval/drb/fact_accuracy", "eval/drb/race_ci_lo", "eval/drb/race_insight"} <= set(r.data.metrics)
    assert r.data.tags["judge.model"] and r.data.tags["judge.prompt_sha"] and "judge.temperature" in r.data.tags
    # its inputs, frozen in the data tree: the exact tasks, and the reference reports; its results written there
    names = sorted(d.dataset.name for d in r.inputs.dataset_inputs)
    assert names[0].startswith("queries-drb-") and names[1:] == [f"reference-{frozen[0].stem}"]
    queries = tmp_path / "data" / "eval" / "queries" / f"{names[0].removeprefix('queries-')}.jsonl"
    assert [json.loads(x)["language"] for x in queries.read_text().splitlines()] == ["en", "zh", "en", "zh"]
    results = (tmp_path / "data" / "eval" / "results" / "drb" / "policy.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in results] == [json.loads(x)["id"] for x in queries.read_text().splitlines()]
    table = json.loads(Path(client.download_artifacts(r.info.run_id, "eval/drb/tasks.json", str(tmp_path))).read_text())
    assert [row[1] for row in table["data"]] == ["en", "zh", "en", "zh"]
    rows = [json.loads(x) for x in Path(client.download_artifacts(r.info.run_id, "eval/drb/reports.jsonl",
                                                                  str(tmp_path))).read_text().splitlines()]
    assert all(row["judge"]["prompt_sha"] == r.data.tags["judge.prompt_sha"] for row in rows)
    assert all(row["rubric"] == {"weights": "official", "criteria": "official"} for row in rows)


async def _artifacts() -> dict:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key: a.data for a in await client.read_artifacts() if a.key}


@pytest.mark.slow
def test_a_judge_whose_answers_never_parse_falls_back_and_counts_it(prefect_server, tmp_path):
    from teacher_api import TeacherAPI

    from flows.evaluate import evaluate

    seeds = tmp_path / "queries.jsonl"
    seeds.write_text(json.dumps({"query": "How did the printing press change Europe?"}) + "\n")
    with TeacherAPI(latency_s=0.0, judge="garbled") as api, TeacherAPI(latency_s=0.0, tool_steps=1) as ref:
        r = asyncio.run(evaluate(config_path=str(REPO / "configs" / "tiny.yaml"),
                                 overrides=_overrides(tmp_path, api.base_url, ref.base_url),
                                 models=[f"{api.base_url}#policy"], labels=["policy"], queries=str(seeds)))
    m = r["summaries"]["policy"]
    # generated rubric: no weight sample parsed (equal weights), no criteria parsed (the defaults); no criterion
    # scored, so both sides score 0 and the task sits at parity; every statement's label unreadable: no accuracy
    assert m["race"] == 50.0 and m["race_unscored"] > 0
    assert "fact_accuracy" not in m and m["fact_statements"] > 0


def test_fact_falls_back_to_the_judge_for_inline_urls_held_to_the_reports_own(settings_factory):
    from teacher_api import TeacherAPI

    from models.llm import make_client
    from oresearcher.config import ModelConfig
    from oresearcher.research.environment import ResearchEnvironment

    report = ("## Findings\nThe plague spread along trade routes (https://en.wikipedia.org/wiki/Black_Death).\n"
              "It killed a third of Europe, see https://en.wikipedia.org/wiki/Plague_(disease)\n")
    assert ev.fact_pairs(report) == ([], 0)  # no [n] and no References: nothing for the rules
    with TeacherAPI(latency_s=0.0) as api:
        client = make_client(ModelConfig(name="judge", backend="openai", base_url=api.base_url, guided=False))

        env = ResearchEnvironment.from_config(settings_factory())
        rubric = ev.Rubric({d: 0.25 for d in ev.DIMENSIONS}, {d: [("x", 1.0)] for d in ev.DIMENSIONS})

        async def go():
            try:
                return (await ev.judge_fact_pairs(client, report, 5),
                        await ev.score_task(client, env, ECFG, ev.EvalTask("t", "The Black Death?"), rubric, report,
                                            ""))
            finally:
                await client.aclose()

        pairs, row = asyncio.run(go())
    # in the evaluation, such a report's statements come from the judge, and each page is fetched and labelled
    assert row["fact_extracted_by"] == "judge" and row["fact_pairs"] == 2
    # (the second page is not in the local corpus: unfetched, so out of citation accuracy)
    assert row["fact_labels"] == ["supported", "unfetched"] and ev.citation_accuracy(row["fact_labels"]) == 1.0
    assert [url for _, url in pairs] == ["https://en.wikipedia.org/wiki/Black_Death",
                                         "https://en.wikipedia.org/wiki/Plague_(disease)"]
    assert pairs[0][0].startswith("The plague spread along trade routes")
    # a URL the judge makes up is not the report's: dropped
    assert g.parse_statements("1. A claim | https://made.up/x\n", g.urls_in(report)) == []


@pytest.mark.slow
def test_drg_queries_get_key_point_recall(prefect_server, tmp_path):
    from teacher_api import TeacherAPI

    from flows.evaluate import evaluate

    with TeacherAPI(latency_s=0.0, findings=2) as api, TeacherAPI(latency_s=0.0, tool_steps=1) as ref:
        r = asyncio.run(evaluate(config_path=str(REPO / "configs" / "tiny.yaml"),
                                 overrides=[*_overrides(tmp_path, api.base_url, ref.base_url),
                                            "evaluate.max_key_points=3"],
                                 models=[f"{api.base_url}#policy"], labels=["policy"], queries="drg", limit=2))
    m = r["summaries"]["policy"]
    assert {"kpr", "kpr_ci_lo", "kpc"} <= set(m) and 0 <= m["kpr"] <= 100
    assert "KPR" in r["table"]


@pytest.mark.slow
def test_promotion_moves_the_champion_only_when_the_challenger_wins(tmp_path):
    from mlflow.tracking import MlflowClient

    from oresearcher.config import load_config
    from oresearcher.registry import register_model
    from oresearcher.tracking import stage_run
    from tasks.evaluation import promote

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    model = tmp_path / "m"
    model.mkdir()
    (model / "weights.txt").write_text("w")
    name = cfg.registry.policy_name
    with stage_run(cfg, "train") as (client, run_id):
        v1 = register_model(client, run_id, name, model, "champion", {})
        v2 = register_model(client, run_id, name, model, "challenger", {})
    client = MlflowClient(cfg.mlflow.resolved_uri(), registry_uri=cfg.mlflow.resolved_uri())
    lost = ev.promotion([{"race": 0.5}] * 3, [{"race": 0.5}] * 3, "race", ECFG)
    won = ev.promotion([{"race": 0.8}, {"race": 0.7}, {"race": 0.9}], [{"race": 0.5}] * 3, "race", ECFG)
    with stage_run(cfg, "evaluate") as (_, eval_run):
        d = promote.fn(cfg, client, eval_run, f"models:/{name}@challenger", f"models:/{name}@champion", lost)
        assert not d["promote"] and client.get_model_version_by_alias(name, "champion").version == v1
        d = promote.fn(cfg, client, eval_run, f"models:/{name}@challenger", f"models:/{name}@champion", won)
    assert d["promote"] and client.get_model_version_by_alias(name, "champion").version == v2
    run = client.get_run(eval_run)
    assert run.data.tags["promoted"] == "true" and run.data.metrics["promotion/difference"] == pytest.approx(0.3)
    assert "promoted" in client.get_model_version(name, v2).tags["promotion"]


def test_the_html_report_renders_its_plots_in_chromium(tmp_path):
    from test_review_page import CHROMIUM, CHROMIUM_ARGS

    from oresearcher import eval_report

    def summary(race: float, valid: float) -> dict:
        m = {"race": race, "race_ci_lo": race - 5, "race_ci_hi": race + 5, "valid": valid, "valid_ci_lo": valid,
             "valid_ci_hi": valid, "fact_accuracy": 0.5, "tool_calls": 2.0}
        for d in ev.DIMENSIONS:
            m |= {f"race_{d}": race, f"race_{d}_ci_lo": race - 4, f"race_{d}_ci_hi": race + 4}
        return m

    page = eval_report.render("heldout", {"base": summary(50, 0.0), "grpo": summary(62, 0.25)},
                              {"summary": "kept: difference +0.120"}, {"model": "judge", "confidence": 0.95}, 8)
    html = tmp_path / "report.html"
    html.write_text(page)
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "this test needs Debian's Chromium: apt-get install -y chromium (README, Tests)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page()
        tab.goto(html.as_uri())
        bars = tab.locator("svg.chart rect.bar")
        # 5 RACE groups x 2 models, then 2 more groups (citation accuracy, format) x 2 models
        assert bars.count() == 14
        boxes = [bars.nth(i).bounding_box() for i in range(bars.count())]
        assert all(b and b["height"] > 0 and b["width"] > 0 for b in boxes[:10])
        models = {bars.nth(i).get_attribute("data-model") for i in range(bars.count())}
        assert models == {"base", "grpo"}
        assert tab.locator("line.interval").count() == 14
        shot = tmp_path / "report.png"
        tab.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


def test_cli_evaluate_user_errors_are_one_line():
    for args, needle in ((["--queries", "nonsense"], "query set 'nonsense'"),
                         (["--model", "a", "--label", "x", "--label", "y"], "give one label per model")):
        out = subprocess.run([sys.executable, "-m", "oresearcher.cli", "evaluate", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr

"""Evaluation (roadmap stage 4, method.md §5): policies on a query set, scored the way the field scores deep research.

    oresearcher evaluate --queries drb --limit 4                      # two English, two Chinese DRB tasks
    oresearcher evaluate --queries heldout --model base --model models:/o-researcher-policy@challenger
    oresearcher evaluate --queries seeds/my_queries.jsonl --model http://gpu-box:8000/v1#my-policy

Each policy runs unguided through the policy runtime and the research environment; its reports get RACE (side by
side with the reference system's frozen reports, or pointwise), FACT (statement–URL pairs, each page fetched and
each statement labelled), key-point recall on DeepResearchGym, and format and tool-call statistics. Every score
carries the judge's identity and a bootstrap interval over tasks. Each model gets an MLflow run (`eval/<set>/*`),
linked from the model version it evaluated; a summary run holds the HTML report and the promotion decision: the
`champion` alias moves to the challenger when it beats the champion by more than the interval.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from oresearcher.config import load_config


def default_models(cfg, mlflow) -> list[tuple[str, str]]:
    """(label, model): the base model, the champion and the challenger when registered."""
    from oresearcher.registry import model_version

    out, seen = [("base", cfg.model.name)], set()
    for alias in ("champion", "challenger"):
        uri = f"models:/{cfg.registry.policy_name}@{alias}"
        version = model_version(mlflow, uri)
        if version is not None and version.version not in seen:  # a promoted challenger is the champion: once
            out.append((alias, uri))
            seen.add(version.version)
    return out


def role(candidates: list[tuple[str, str]], name: str, model: str | None = None) -> str | None:
    """The label of the candidate playing `name` in promotion: labelled so, registered under that alias
    (`models:/...@challenger`), or (for the base model) named `model`."""
    for label, uri in candidates:
        if label == name or uri.endswith(f"@{name}") or (model is not None and uri == model):
            return label
    return None


def comparison_table(set_name: str, summaries: dict[str, dict[str, float]], tasks: int) -> str:
    """The printed comparison: each headline score with its interval, one row per model."""
    cols = [("race", "RACE", 1.0), ("fact_accuracy", "cite acc %", 100.0), ("fact_effective_citations", "eff cites", 1.0),
            ("kpr", "KPR", 1.0), ("valid", "valid %", 100.0), ("tool_calls", "tools", 1.0)]
    cols = [c for c in cols if any(c[0] in m for m in summaries.values())]
    lines = [["model", *(t for _, t, _ in cols)]]
    for label, m in summaries.items():
        cells = []
        for k, _, s in cols:
            if k not in m:
                cells.append("-")
            elif f"{k}_ci_lo" in m:
                cells.append(f"{m[k] * s:.1f} [{m[k + '_ci_lo'] * s:.1f}, {m[k + '_ci_hi'] * s:.1f}]")
            else:
                cells.append(f"{m[k] * s:.2f}")
        lines.append([label, *cells])
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    out = [f"evaluation on {set_name}, {tasks} tasks (RACE: 50 = parity with the reference; [95% interval]):"]
    out += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in lines]
    return "\n".join(out)


@flow(name="evaluate", log_prints=True)
async def evaluate(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None,
                   models: list[str] | None = None, labels: list[str] | None = None, queries: str | None = None,
                   limit: int | None = None, promote: bool | None = None) -> dict:
    import asyncio
    import tempfile
    from pathlib import Path

    from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact, create_markdown_artifact
    from tqdm import tqdm

    from oresearcher import eval_report
    from oresearcher.evaluation import promotion, query_set, summarize
    from oresearcher.judge import make_judge
    from oresearcher.registry import model_version
    from oresearcher.research.environment import ResearchEnvironment
    from oresearcher.tracking import client as tracking_client
    from oresearcher.tracking import stage_run
    from tasks.evaluation import (
        freeze_queries,
        judge_identity,
        log_evaluation,
        policy_reports,
        reference_reports,
        rubrics,
        score_reports,
        write_results,
    )
    from tasks.evaluation import promote as promote_task
    from tasks.versioning import lineage_card, record_inputs, record_outputs, version_data

    cfg = load_config(config_path, overrides)
    ecfg = cfg.evaluate
    set_name = queries or ecfg.queries
    tasks = query_set(set_name, limit or ecfg.limit, cfg.paths.resolve(cfg.ingest.heldout_seeds))
    set_key = set_name if "/" not in set_name and "." not in set_name else Path(set_name).stem
    mlflow = tracking_client(cfg)
    candidates = list(zip(labels or models, models, strict=True)) if models else default_models(cfg, mlflow)
    if (ecfg.promote if promote is None else promote) and role(candidates, "challenger") \
            and not role(candidates, "champion"):
        challenger_version = model_version(mlflow, dict(candidates)[role(candidates, "challenger")])
        candidates += [c for c in default_models(cfg, mlflow) if c[0] == "champion"  # the one to beat, if any
                       and (challenger_version is None
                            or model_version(mlflow, c[1]).version != challenger_version.version)]
    log = get_run_logger()
    env = ResearchEnvironment.from_config(cfg)
    judge = make_judge(cfg, run="evaluate")
    identity = judge_identity(judge, ecfg)
    queries_path = freeze_queries(cfg, set_key, tasks)  # from the held-out seeds, a seed file or a benchmark
    summaries: dict[str, dict[str, float]] = {}
    scored: dict[str, list[dict]] = {}
    results: dict[str, Path] = {}  # run id -> the results it wrote into the data tree
    decision = None
    progress = await acreate_progress_artifact(0.0, key=f"evaluation-progress-{_artifact_key(set_key)}",
                                               description=f"{len(candidates)} models x {len(tasks)} tasks scored")
    bar = tqdm(total=len(candidates) * len(tasks), desc="evaluate", unit="task")

    ordered = asyncio.Lock()  # tasks finishing together must not land their updates out of order

    async def on_done() -> None:
        async with ordered:
            bar.update(1)
            await aupdate_progress_artifact(progress, 100.0 * bar.n / max(1, bar.total))

    try:
        references, ref_path = ({}, None) if ecfg.race == "pointwise" else \
            await reference_reports(cfg, set_key, tasks, env)
        rubric_of = await rubrics(cfg, tasks, judge)
        inputs = [(f"queries-{queries_path.stem}", queries_path),
                  *([(f"reference-{ref_path.stem}", ref_path)] if ref_path else [])]
        inputs_version = version_data(cfg)  # the version holding them, recorded on every run below
        with stage_run(cfg, f"evaluate-{set_key}", tags={"queries": set_name, "tasks": str(len(tasks))}) \
                as (_, parent_id):
            record_inputs(cfg, mlflow, parent_id, inputs, "evaluation", version=inputs_version)
            for label, model in candidates:
                with stage_run(cfg, f"evaluate-{set_key}-{label}",
                               tags={"model": model, "label": label, "queries": set_name,
                                     "mlflow.parentRunId": parent_id}) as (client, run_id):
                    record_inputs(cfg, client, run_id, inputs, "evaluation", version=inputs_version)
                    rows = await policy_reports(cfg, model, tasks, env)
                    scored[label] = await score_reports(cfg, tasks, rows, references, rubric_of, judge, env, identity,
                                                        on_done)
                    summaries[label] = summarize(scored[label], ecfg)
                    log_evaluation(client, run_id, set_key, summaries[label], scored[label],
                                   [r["trace"] for r in rows], identity, model)
                    results[run_id] = write_results(cfg, set_key, label, scored[label], [r["trace"] for r in rows])
            want = ecfg.promote if promote is None else promote
            challenger = role(candidates, "challenger")
            champion = role(candidates, "champion") or role(candidates, "base", cfg.model.name)
            if want and challenger and champion and dict(candidates)[champion] != dict(candidates)[challenger]:
                decision = promote_task(cfg, mlflow, parent_id, dict(candidates)[challenger],
                                        dict(candidates)[champion],
                                        promotion(scored[challenger], scored[champion], ecfg.primary_metric, ecfg))
            text = comparison_table(set_key, summaries, len(tasks))
            page = eval_report.render(set_key, summaries, decision, identity, len(tasks))
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "report.html").write_text(page)
                mlflow.log_artifact(parent_id, str(Path(tmp) / "report.html"), f"eval/{set_key}")
            mlflow.log_text(parent_id, text + "\n", f"eval/{set_key}/comparison.txt")
            report_uri = f"{mlflow.get_run(parent_id).info.artifact_uri}/eval/{set_key}/report.html"
    finally:
        bar.close()
        await judge.client.aclose()
    data_version = version_data(cfg)  # the results joined the data tree
    for child_id, path in results.items():
        record_outputs(cfg, mlflow, child_id, [path], data_version)
    record_outputs(cfg, mlflow, parent_id, [p for _, p in inputs], inputs_version)  # frozen here, first
    lineage_card(mlflow, parent_id, f"Evaluation on {set_key}")
    log.info("%s", text)
    if decision:
        log.info("promotion: %s", decision["summary"])
    await create_markdown_artifact(key=f"evaluation-{_artifact_key(set_key)}", description=text.splitlines()[0],
                                   markdown=f"```\n{text}\n```\n\nHTML report (plots, intervals): {report_uri}\n\n"
                                            + (f"**Promotion:** {decision['summary']}\n" if decision else ""))
    return {"queries": set_name, "tasks": len(tasks), "models": dict(candidates), "summaries": summaries,
            "table": text, "decision": decision, "report": report_uri, "run_id": parent_id,
            "data_version": data_version, "judge": identity}


def _artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "set"

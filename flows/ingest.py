"""Seed ingestion (method.md §1, step 1): seed files → validated, de-duplicated, contamination-checked seed set.

    oresearcher ingest seeds/default.jsonl more_seeds.csv

Writes `data/seeds/seeds.jsonl` and `data/seeds/report.json` (every rejection with file, line and reason),
records a DVC version of `data/`, and logs an MLflow run with the counts (`ingest/...`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from oresearcher.config import load_config
from oresearcher.seeds import format_report, seeds_dir
from tasks.ingest import check_seed_files, write_seeds
from tasks.versioning import lineage_card, record_outputs, version_data


@flow(name="ingest", log_prints=True)
def ingest(paths: list[str], config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config(config_path, overrides)
    from oresearcher.tracking import log_file_input, stage_run

    with stage_run(cfg, "ingest", tags={"inputs": ",".join(paths)[:5000]}) as (mlflow, run_id):
        for path in paths:  # each seed file a dataset input (the runs table's Dataset column)
            log_file_input(mlflow, run_id, Path(path), context="source")
        result = check_seed_files(paths, cfg)
        get_run_logger().info("seed check:\n%s", format_report(result))
        for key, value in result.counts().items():
            mlflow.log_metric(run_id, f"ingest/{key}", value)
        version = write_seeds(result, paths, cfg)
        mlflow.log_artifact(run_id, str(seeds_dir(cfg.paths.data) / "report.json"))
        data_version = version_data(cfg)
        mlflow.set_tag(run_id, "seed_version", version)
        mlflow.set_tag(run_id, "data_version", str(data_version))
        record_outputs(cfg, mlflow, run_id, [seeds_dir(cfg.paths.data) / "seeds.jsonl"], data_version)
        lineage_card(mlflow, run_id, f"Seed set {version}")
    return {"seed_version": version, "data_version": data_version, "counts": result.counts(),
            "report": json.loads((seeds_dir(cfg.paths.data) / "report.json").read_text())["counts"]}

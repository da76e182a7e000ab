"""The whole recipe on one config: `oresearcher run --config configs/tiny.yaml` (what `make run` calls).

Stages, as in the paper (method.md §1): seed ingestion → multi-agent synthesis → three-tier filtering → SFT →
GRPO → evaluation. Stages join this flow as they land; today it readies the research environment (model,
search index, tools recorded on the tape), versions the data tree and logs the run to MLflow.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from oresearcher.config import load_config
from tasks.environment import build_search_index, prepare_model, probe_research_tools
from tasks.versioning import version_data

PROBE_QUERIES = ["causes of the Black Death", "how does photosynthesis work", "history of the printing press"]


@flow(name="pipeline", log_prints=True)
def pipeline(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None) -> dict:
    cfg = load_config(config_path, overrides)
    log = get_run_logger()
    from oresearcher.tracking import stage_run

    with stage_run(cfg, "pipeline") as (mlflow, run_id):
        model_dir = prepare_model(cfg)
        index = build_search_index(cfg)
        probe = probe_research_tools(cfg, PROBE_QUERIES)
        data_version = version_data(cfg)
        mlflow.set_tag(run_id, "model_dir", model_dir)
        mlflow.set_tag(run_id, "data_version", str(data_version))
        for key, value in {"index_docs": index["docs"], **probe}.items():
            mlflow.log_metric(run_id, f"env/{key}", float(value))
    log.info("model %s | index %s | probe %s | data version %s", model_dir, index, probe, data_version)
    return {"model_dir": model_dir, "index": index, "probe": probe, "data_version": data_version}

"""Scheduled retraining: new seed files in the inbox → a new seed version (the old seeds plus the new ones,
de-duplicated) → the whole pipeline (synthesize → filter, waiting for review if `review.required` → SFT → GRPO →
evaluate → promote if better).

    oresearcher retrain [--stop-after ingest]      # prefect.yaml's `retrain-tiny` runs it on a cron schedule

An inbox file counts as new until a retrain that took it completes (`data/seeds/inbox.json` records each by
content hash): a retrain that fails midway takes the same files again next time, and since the seed version is the
same, synthesis resumes where it stopped instead of paying for the same traces twice. With nothing new in the
inbox, a scheduled run does nothing.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from oresearcher.config import load_config


@flow(name="retrain", log_prints=True)
async def retrain(config_path: str = "configs/tiny.yaml", overrides: list[str] | None = None,
                  stop_after: Literal["ingest"] | None = None) -> dict:
    from flows.ingest import ingest
    from flows.pipeline import pipeline
    from oresearcher.seeds import seeds_dir
    from tasks.ingest import new_inbox_files, record_inbox_files

    cfg = load_config(config_path, overrides)
    log = get_run_logger()
    new = new_inbox_files(cfg)
    if not new:
        log.info("no new seed files in %s: nothing to retrain on", cfg.paths.resolve(cfg.retrain.inbox))
        return {"status": "nothing_new", "new_files": []}
    current = seeds_dir(cfg.paths.data) / "seeds.jsonl"
    paths = ([str(current)] if current.is_file() else []) + [str(p) for p in new]
    log.info("%d new seed file(s): %s", len(new), ", ".join(p.name for p in new))
    if stop_after == "ingest":
        result = {"status": "ingested", "seeds": ingest(paths=paths, config_path=config_path, overrides=overrides)}
    else:
        result = {"status": "retrained", **await pipeline(config_path=config_path, overrides=overrides,
                                                          seed_files=paths)}
    version = (result.get("seeds") or {}).get("seed_version")
    record_inbox_files(cfg, new, version)
    return {**result, "new_files": [str(p) for p in new]}

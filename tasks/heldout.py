"""Tasks of the held-out comparison: which models, a loadable copy of each, their traces, what gets logged."""

from __future__ import annotations

import json

from prefect import task
from prefect.cache_policies import NO_CACHE

from oresearcher.config import Settings


@task(name="heldout-models", cache_policy=NO_CACHE)
def heldout_models(cfg: Settings, mlflow) -> list[tuple[str, str]]:
    """(label, model) to compare: the base model, then the newest version each training stage registered."""
    out = [("base", cfg.model.name)]
    name = cfg.registry.policy_name
    for stage in ("sft", "grpo"):
        try:
            versions = mlflow.search_model_versions(f"name = '{name}' and tags.stage = '{stage}'")
        except Exception:  # noqa: BLE001 - an unknown name: nothing registered yet
            versions = []
        if versions:
            out.append((stage, f"models:/{name}/{max(int(v.version) for v in versions)}"))
    return out


@task(name="load-model", cache_policy=NO_CACHE)
def local_model(cfg: Settings, model: str) -> str:
    """A full-weights folder for `model` (a config model name, a folder, or a models:/ URI)."""
    from models.resolve import merged_policy, resolve_model
    from oresearcher.registry import download_model

    if not model.startswith("models:/"):
        return resolve_model(model, cfg.paths.cache)
    local = cfg.paths.checkpoints / "registry" / model.removeprefix("models:/").replace("/", "-v").replace("@", "-at-")
    if "@" in model:  # an alias moves: fetch what it points at now
        import shutil

        shutil.rmtree(local, ignore_errors=True)
    if not local.is_dir():
        download_model(model, cfg.mlflow.resolved_uri(), local)
    return merged_policy(local, cfg.model.name, cfg.paths.cache)


@task(name="heldout-traces", cache_policy=NO_CACHE)
async def run_heldout(cfg: Settings, model_dir: str, queries: list[str], judge) -> list[dict]:
    from oresearcher.heldout import heldout_traces

    return await heldout_traces(cfg, model_dir, queries, judge)


@task(name="log-heldout", cache_policy=NO_CACHE)
def log_heldout(mlflow, run_id: str, rows: list[dict], means: dict[str, float]) -> None:
    """`heldout/*` means on the model's run, and every trace with its metrics as `heldout/traces.jsonl`."""
    from mlflow.entities import Metric

    now = __import__("time").time_ns() // 1_000_000
    mlflow.log_batch(run_id, metrics=[Metric(f"heldout/{k}", float(v), now, 0) for k, v in means.items()])
    mlflow.log_text(run_id, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    "heldout/traces.jsonl")

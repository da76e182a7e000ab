"""The Prefect task of synthesis: one per seed, retried on unexpected errors."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from oresearcher.seeds import Seed
from oresearcher.synthesis import SeedOutcome, SynthesisContext
from oresearcher.synthesis import synthesize_seed as synthesize_seed_engine


# NO_CACHE: the context holds live clients, and resumability comes from the trace store and the
# response cache (which survive crashes), not from Prefect's result cache.
@task(name="synthesize-seed", cache_policy=NO_CACHE, retry_delay_seconds=2, task_run_name="seed-{seed.id}")
async def synthesize_seed(seed: Seed, ctx: SynthesisContext) -> SeedOutcome:
    """All k candidate traces of one seed (planner → parallel subtask agents → summarizer)."""
    return await synthesize_seed_engine(seed, ctx)


# ----------------------------------------------------------------------------------------- on a Dask cluster

# Per worker process: one event loop thread and one synthesis context per (config, seed version, run), built on
# the first seed the worker gets and reused for the rest (clients, search index and stores open once).
_WORKER: dict = {}


def _worker_loop():
    import asyncio
    import threading

    if "loop" not in _WORKER:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="synthesis-worker-loop", daemon=True).start()
        _WORKER["loop"] = loop
    return _WORKER["loop"]


def _worker_context(config_path: str, overrides: tuple[str, ...], seed_version: str, run: str,
                    share: float) -> SynthesisContext:
    from models.llm import Budget, LLMStore, make_client
    from oresearcher.config import load_config
    from oresearcher.research.environment import ResearchEnvironment
    from oresearcher.synthesis import open_trace_store

    key = (config_path, overrides, seed_version, run)
    if _WORKER.get("key") != key:
        cfg = load_config(config_path, list(overrides))
        s = cfg.synthesis
        budget = Budget(s.max_cost_usd * share if s.max_cost_usd is not None else None,
                        int(s.max_tokens * share) if s.max_tokens is not None else None)
        client = make_client(s.teacher, key="synthesis.teacher", store=LLMStore(cfg.paths.data / "llm.sqlite"),
                             budget=budget, run=run, cache_dir=cfg.paths.cache)
        _WORKER.update(key=key, ctx=SynthesisContext(cfg, client, ResearchEnvironment.from_config(cfg),
                                                     open_trace_store(cfg.paths.data), seed_version))
    return _WORKER["ctx"]


@task(name="synthesize-seed", cache_policy=NO_CACHE, retry_delay_seconds=2, task_run_name="seed-{seed.id}")
def synthesize_seed_on_worker(seed: Seed, config_path: str, overrides: list[str], seed_version: str, run: str,
                              share: float) -> SeedOutcome:
    """`synthesize_seed` in a Dask worker process: its arguments travel (no live clients), the context is the
    worker's own (`_worker_context`), the trace store the same file every worker appends to."""
    import asyncio

    ctx = _worker_context(config_path, tuple(overrides), seed_version, run, share)
    return asyncio.run_coroutine_threadsafe(synthesize_seed_engine(seed, ctx), _worker_loop()).result()


def dask_task_runner(cfg):
    """prefect-dask's runner: an existing cluster (`synthesis.dask_address`) or a local one of worker processes."""
    from prefect_dask import DaskTaskRunner

    s = cfg.synthesis
    if s.dask_address:
        return DaskTaskRunner(address=s.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": s.dask_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def dask_runner(cfg, config_path: str, overrides: list[str], seed_version: str, run: str, task_runner):
    """A runner for `run_seeds`: each seed submitted to the Dask cluster behind `task_runner` (entered by the
    caller), awaited without blocking the flow's loop. The caps are split among the workers."""
    import asyncio

    workers = cfg.synthesis.dask_workers
    remote = synthesize_seed_on_worker.with_options(retries=cfg.synthesis.seed_retries)

    async def runner(seed: Seed, ctx: SynthesisContext) -> SeedOutcome:
        future = task_runner.submit(remote, parameters={
            "seed": seed, "config_path": config_path, "overrides": list(overrides), "seed_version": seed_version,
            "run": run, "share": 1.0 / workers})
        return await asyncio.to_thread(future.result)

    return runner

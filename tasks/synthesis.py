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

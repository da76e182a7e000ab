"""The synthesis engine: seeds in, one JSONL trace record per (seed, candidate) out, resumable and budgeted.

Used by the `synthesize` flow (one Prefect task per seed) and by `benchmarks/synthesis.py` (the same engine
without Prefect's per-task overhead). What makes a crash cheap:
- every LLM response is stored in the response cache the moment it arrives (`data/llm.sqlite`), every tool
  result on the tape (`data/tape.sqlite`): a re-run replays finished calls for free and identically;
- every finished candidate is appended (and fsynced) to `data/traces/traces.jsonl` keyed by (seed, candidate):
  a re-run skips it, so each seed ends exactly once as a trace or a recorded failure.
A spent budget raises `BudgetExceeded` inside the client; the engine stops starting seeds, and the
unfinished ones stay unrecorded so a later run with more budget picks them up.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.llm import BudgetExceeded, LLMClient
from oresearcher import grammar as g
from oresearcher.agents import ResearchResult, prompts_fingerprint, research, summary_of
from oresearcher.config import Settings
from oresearcher.research.environment import ResearchEnvironment
from oresearcher.research.tape import TapeMiss
from oresearcher.seeds import Seed
from oresearcher.store import JsonlStore
from oresearcher.tracing import span


def traces_path(data_dir: Path) -> Path:
    return Path(data_dir) / "traces" / "traces.jsonl"


@dataclass
class SynthesisContext:
    cfg: Settings
    client: LLMClient
    env: ResearchEnvironment
    store: JsonlStore
    seed_version: str
    prompts: str = field(default_factory=prompts_fingerprint)


@dataclass
class SeedOutcome:
    seed_id: str
    written: int = 0  # candidates recorded by this call
    valid: int = 0
    failed: int = 0
    stopped: str | None = None  # "budget_spent" or "tape_miss": left unrecorded, to resume later


def trace_id(seed: Seed, candidate: int, ctx: SynthesisContext) -> str:
    parts = [seed.id, str(candidate), ctx.client.model_id, ctx.prompts, ctx.cfg.name]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def make_record(seed: Seed, candidate: int, result: ResearchResult, ctx: SynthesisContext) -> dict:
    violations = g.validate(result.trace) if result.trace else []
    return {
        "id": trace_id(seed, candidate, ctx), "seed_id": seed.id, "candidate": candidate, "query": seed.query,
        "seed_version": ctx.seed_version, "trace": result.trace, "report": result.report,
        "valid": bool(result.trace) and not violations, "violations": [str(v) for v in violations],
        "guided": 0 < result.usage.calls == result.usage.guided_calls,  # every call held to its grammar
        "structure": summary_of(result), "usage": asdict(result.usage),
        "models": {"teacher": ctx.client.model_id, "teacher_endpoint": getattr(ctx.client.backend, "endpoint", None)},
        "prompts": ctx.prompts, "config": ctx.cfg.name,
        "timings": {k: round(v, 3) for k, v in result.timings.items()}, "failure": result.failure,
        "retryable": result.retryable,
        "created": time.time(), "worker": f"{socket.gethostname()}:{os.getpid()}",  # which process made it
    }


def failure_record(seed: Seed, candidate: int, reason: str, ctx: SynthesisContext) -> dict:
    return make_record(seed, candidate, ResearchResult(seed.query, failure=reason), ctx)


def open_trace_store(data_dir: Path) -> JsonlStore:
    """The trace records; a retryable failure does not settle its (seed, candidate): a re-run tries it again."""
    return JsonlStore(traces_path(data_dir), ("seed_id", "candidate"), final=lambda r: not r.get("retryable"))


async def synthesize_seed(seed: Seed, ctx: SynthesisContext) -> SeedOutcome:
    """All k candidates of one seed; candidates already on disk are skipped."""
    outcome = SeedOutcome(seed.id)
    reports: dict[str, str] = {}
    with span(f"seed:{seed.id}", "AGENT", {"query": seed.query}) as sp:
        for k in range(ctx.cfg.synthesis.candidates_per_seed):
            if (seed.id, k) in ctx.store:
                continue
            try:
                result = await research(ctx.client, ctx.env, seed.query, ctx.cfg.synthesis, seed=_seed_int(seed, k))
            except BudgetExceeded:
                outcome.stopped = "budget_spent"
                return outcome
            except TapeMiss:
                outcome.stopped = "tape_miss"
                return outcome
            record = make_record(seed, k, result, ctx)
            reports[f"candidate {k}"] = result.report or f"(failed: {result.failure})"
            if ctx.store.append(record):
                outcome.written += 1
                outcome.valid += record["valid"]
                outcome.failed += record["failure"] is not None
        # The trace's output in the MLflow UI: the report (as its input is the query)
        sp.set_outputs(next(iter(reports.values())) if len(reports) == 1 else reports or "(already synthesized)")
    return outcome


def _seed_int(seed: Seed, candidate: int) -> int:
    return int(seed.id[:8], 16) * 16 + candidate


Runner = Callable[[Seed, SynthesisContext], Awaitable[SeedOutcome]]


async def run_seeds(seeds: list[Seed], ctx: SynthesisContext, runner: Runner = synthesize_seed,
                    on_done: Callable[[SeedOutcome], object] | None = None) -> list[SeedOutcome]:
    """Run seeds `synthesis.concurrency` at a time; stop starting new ones once the budget is spent.

    When the runner raises (after its own retries), the candidate it was on is recorded as a failure with the
    reason and the runner is called again for the seed's remaining candidates.
    """
    sem = asyncio.Semaphore(ctx.cfg.synthesis.concurrency)
    stop = asyncio.Event()

    async def one(seed: Seed) -> SeedOutcome:
        async with sem:
            if stop.is_set():
                return SeedOutcome(seed.id, stopped="budget_spent")
            outcome = SeedOutcome(seed.id)
            for _attempt in range(ctx.cfg.synthesis.candidates_per_seed):
                try:
                    got = await runner(seed, ctx)
                except Exception as e:  # noqa: BLE001 - a crash becomes the recorded failure of its candidate
                    k = next((c for c in range(ctx.cfg.synthesis.candidates_per_seed) if (seed.id, c) not in ctx.store),
                             None)
                    if k is None:
                        break
                    ctx.store.append(failure_record(seed, k, f"error: {type(e).__name__}: {e}"[:500], ctx))
                    outcome.written += 1
                    outcome.failed += 1
                    continue
                outcome.written += got.written
                outcome.valid += got.valid
                outcome.failed += got.failed
                outcome.stopped = got.stopped
                break
            if outcome.stopped == "budget_spent":
                stop.set()
            if on_done and inspect.isawaitable(done := on_done(outcome)):
                await done
            return outcome

    return list(await asyncio.gather(*(one(s) for s in seeds)))


def pending(seeds: list[Seed], store: JsonlStore, k: int) -> list[Seed]:
    return [s for s in seeds if any((s.id, c) not in store for c in range(k))]

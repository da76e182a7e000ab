"""Synthesis benchmark: the engine against a real OpenAI-compatible server on 127.0.0.1 with a fixed latency.

    python benchmarks/synthesis.py [--quick]

Prints, each measured side by side in one run:
1. traces/s at seed concurrency 1, 4, 16, 64 against the ideal for the server's latency (a trace's critical
   path is planner + one subtask agent's calls + summarizer, since the subtask agents run concurrently);
2. parallel vs sequential subtask agents on the same seeds: wall time of the subtask phase and of whole traces;
3. wall time per seed and peak memory (RSS) at 100 and 1,000 seeds, each in a fresh process;
4. the embedded model (SmolLM2-135M in transformers, the `local` backend): tokens/s of a plain 8-way batched
   `generate` (the ceiling), one request at a time, 8 agent steps guided vs unguided, and the make-run-shaped
   workload (4 seeds in flight x 2 parallel agents, multi-step, guided: a burst of 4, and a flow of 12) as a
   share of the ceiling.
The engine is the one the `synthesize` flow runs per seed (`oresearcher.synthesis`), without Prefect's
per-task overhead, which is constant per seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the stand-in teacher API is a test helper; benchmarks borrow it

from teacher_api import TeacherAPI  # noqa: E402

SUBTASKS, TOOL_STEPS = 3, 2
CALLS_ON_CRITICAL_PATH = 1 + (TOOL_STEPS + 1) + 1  # planner, one agent's steps, summarizer


def bench_seeds(n: int):
    """n distinct research queries (benchmark inputs only; never training seeds)."""
    from oresearcher.seeds import Seed, seed_id

    topics = ["printing", "plague", "volcanoes", "coffee", "steam engines", "vaccines", "the Silk Road", "bees"]
    queries = [f"Question {i}: how did {topics[i % len(topics)]} shape history and daily life (case {i})?"
               for i in range(n)]
    return [Seed(seed_id(q), q, "benchmark", i) for i, q in enumerate(queries)]


def run_engine(api: TeacherAPI, seeds, concurrency: int, parallel: bool = True) -> tuple[float, list[dict]]:
    from oresearcher.config import load_config

    data = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"paths.data_dir={data}", f"research.tape.path={data / 'tape.sqlite'}", "synthesis.teacher.backend=openai",
        f"synthesis.teacher.base_url={api.base_url}",
        f"synthesis.teacher.max_concurrency={concurrency * SUBTASKS}",
        f"synthesis.max_subtasks={SUBTASKS}", f"synthesis.concurrency={concurrency}",
        f"synthesis.parallel_subtasks={str(parallel).lower()}", "synthesis.prefill_think=false",
        "synthesis.mlflow_traces=false"])
    wall, records, _client = timed_synthesis(cfg, seeds)
    assert len(records) == len(seeds) and all(r["failure"] is None for r in records), "benchmark run had failures"
    return wall, records


def timed_synthesis(cfg, seeds):
    """(wall seconds, trace records, client) of the synthesis engine over `seeds` in `cfg.paths.data`; an in-process
    model is loaded before the clock starts."""
    from models.llm import LLMStore, make_client
    from oresearcher.research.environment import ResearchEnvironment
    from oresearcher.synthesis import SynthesisContext, open_trace_store, run_seeds

    store = open_trace_store(cfg.paths.data)
    client = make_client(cfg.synthesis.teacher, store=LLMStore(cfg.paths.data / "llm.sqlite"))
    ctx = SynthesisContext(cfg, client, ResearchEnvironment.from_config(cfg), store, "bench")
    if cfg.synthesis.teacher.backend == "local":
        assert client.backend.engine is not None

    async def go():
        try:
            await run_seeds(seeds, ctx)
        finally:
            await client.aclose()

    start = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - start, list(store), client


def throughput(latency: float, quick: bool) -> None:
    print(f"\n1. traces/s vs concurrency (server latency {latency * 1000:.0f} ms, {SUBTASKS} subtasks x "
          f"{TOOL_STEPS} tool calls; ideal = concurrency / ({CALLS_ON_CRITICAL_PATH} x latency))")
    print(f"{'concurrency':>12}{'seeds':>8}{'traces/s':>10}{'ideal':>8}{'of ideal':>10}")
    with TeacherAPI(latency_s=latency, tool_steps=TOOL_STEPS, subtasks=SUBTASKS) as api:
        for c in (1, 4, 16, 64):
            n = max(4, c * (2 if quick else 3))
            wall, _ = run_engine(api, bench_seeds(n), c)
            ideal = c / (CALLS_ON_CRITICAL_PATH * latency)
            print(f"{c:>12}{n:>8}{n / wall:>10.2f}{ideal:>8.2f}{n / wall / ideal:>9.0%}")


def parallel_vs_sequential(latency: float) -> None:
    seeds = bench_seeds(8)
    with TeacherAPI(latency_s=latency, tool_steps=TOOL_STEPS, subtasks=SUBTASKS) as api:
        par_wall, par = run_engine(api, seeds, 8, parallel=True)
        seq_wall, seq = run_engine(api, seeds, 8, parallel=False)
    par_phase = sum(r["timings"]["subtasks_s"] for r in par) / len(par)
    seq_phase = sum(r["timings"]["subtasks_s"] for r in seq) / len(seq)
    print(f"\n2. parallel vs sequential subtask agents ({len(seeds)} seeds, {SUBTASKS} subtasks each, same seeds)")
    print(f"   subtask phase per trace: sequential {seq_phase:.2f} s, parallel {par_phase:.2f} s -> "
          f"{seq_phase / par_phase:.2f}x (target >= {0.8 * SUBTASKS:.1f}x = 0.8 x {SUBTASKS} subtasks)")
    ideal_whole = (2 + SUBTASKS * (TOOL_STEPS + 1)) / CALLS_ON_CRITICAL_PATH
    print(f"   whole run: sequential {seq_wall:.2f} s, parallel {par_wall:.2f} s -> {seq_wall / par_wall:.2f}x "
          f"(at most {ideal_whole:.2f}x here: planner and summarizer are not parallel)")


def scaling_child(n: int, latency: float) -> None:
    """Run in a fresh process: wall time per seed and peak RSS for n seeds."""
    with TeacherAPI(latency_s=latency, tool_steps=TOOL_STEPS, subtasks=SUBTASKS) as api:
        wall, _ = run_engine(api, bench_seeds(n), 64)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seeds": n, "wall_s": wall, "per_seed_ms": 1000 * wall / n, "peak_rss_mb": peak_mb}))


def scaling(latency: float, sizes: tuple[int, int]) -> None:
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--scaling-child", str(n), "--latency", str(latency)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\n3. scaling at concurrency 64 (latency {latency * 1000:.0f} ms), each size in a fresh process")
    for r in rows:
        print(f"   {r['seeds']:>5} seeds: {r['wall_s']:7.1f} s, {r['per_seed_ms']:6.1f} ms/seed, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    a, b = rows
    print(f"   per-seed time {b['seeds']}/{a['seeds']} seeds: {b['per_seed_ms'] / a['per_seed_ms']:.2f}x; "
          f"peak memory: {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x for {b['seeds'] // a['seeds']}x the seeds")


def embedded_model(quick: bool) -> None:
    """4. The embedded model (SmolLM2-135M, transformers on 2 CPU cores), all measured in this one run."""
    import torch
    from transformers import AutoTokenizer

    from models.llm import make_client
    from oresearcher import grammar as g
    from oresearcher.agents import SUBTASK_STOPS, prompt
    from oresearcher.config import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    client = make_client(cfg.synthesis.teacher)
    engine = client.backend.engine  # loads the model
    steps = [[{"role": "system", "content": prompt("subtask_agent")},
              {"role": "user", "content": f"Research question: {s.query}\nYour subtask: {s.query}"}]
             for s in default_seeds(8)]
    n_new = 128

    # a. the ceiling: one plain `generate` call on 8 equal-length prompts, no row ending early
    tok = AutoTokenizer.from_pretrained(engine.tok.name_or_path)
    tok.padding_side = "left"
    enc = tok.apply_chat_template(steps, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                  padding=True)
    with torch.inference_mode():
        engine.model.generate(**enc, max_new_tokens=2, do_sample=False)
        start = time.perf_counter()
        engine.model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=True, temperature=0.7,
                              top_p=0.95)
        ceiling = 8 * n_new / (time.perf_counter() - start)

    async def gather(calls):
        start = time.perf_counter()
        responses = await asyncio.gather(*calls)
        return sum(r.completion_tokens for r in responses) / (time.perf_counter() - start), responses

    # b. one request at a time, c. guided vs unguided: the same 8 agent steps together
    single, _ = asyncio.run(gather([client.chat(steps[0], max_tokens=n_new, temperature=0.7, seed=99)]))
    # guided, then unguided with each row's guided length; three rounds, alternating, the median of each (one round
    # is ten seconds of noisy CPU time); the prefix cache is emptied before each run so neither finds the other's
    guide = g.step_guide([], caps=cfg.synthesis.guide)
    guided_runs, unguided_runs, valid = [], [], 0
    for round_ in range(3):
        engine.prefix.clear()
        tps, answers = asyncio.run(gather([client.chat(m, seed=100 * round_ + i, guide=guide)
                                           for i, m in enumerate(steps)]))
        guided_runs.append(tps)
        valid += sum(valid_step(r.text) for r in answers)
        engine.prefix.clear()
        tps, _ = asyncio.run(gather([client.chat(m, seed=100 * round_ + 50 + i, max_tokens=r.completion_tokens,
                                                 temperature=0.7) for i, (m, r) in enumerate(zip(steps, answers,
                                                                                                  strict=True))]))
        unguided_runs.append(tps)
    guided, unguided = statistics.median(guided_runs), statistics.median(unguided_runs)
    # unguided as the agent calls it: a prefilled <think>, stop at a tool's closing tag, the config's token budget
    prefilled = [m + [{"role": "assistant", "content": "<think>\n"}] for m in steps]
    _tps, free = asyncio.run(gather([client.chat(m, seed=200 + i, stop=SUBTASK_STOPS)
                                     for i, m in enumerate(prefilled)]))
    free_valid = sum(valid_step(g.complete_stop("<think>\n" + r.text.strip(), r.choices[0].stop_sequence,
                                                SUBTASK_STOPS)) for r in free)
    asyncio.run(client.aclose())

    # d. the make-run-shaped workload: 4 seeds in flight x 2 agents in parallel, multi-step, guided, the local
    # corpus; as a burst of 4 seeds (their planners and reports line up: few rows at the start and the end), and
    # as make run's flow (more seeds than fit, 4 at a time, so phases interleave and rows stay full)
    print("\n4. embedded model (SmolLM2-135M, CPU), tokens/s measured side by side in this run")
    print(f"   a. plain 8-way batched ceiling (one generate call, 8 x {n_new} tokens): {ceiling:6.1f}  "
          "(same weights and attention kernel as the engine)")
    print(f"   b. one request at a time:                                             {single:6.1f}")
    print(f"   c. 8 agent steps together, guided (step grammar; {valid}/24 valid steps): {guided:6.1f}  (median of 3)")
    print(f"      the same 8 unguided, same lengths:                                  {unguided:6.1f}  "
          f"-> guided costs {1 - guided / unguided:+.0%} (target at most 15%)")
    print(f"      valid steps unguided, as the agent asks (prefilled <think>, stop at the tool): {free_valid}/8")
    for label, n_seeds in (("burst", 2 if quick else 4), ("flow", 6 if quick else 12)):
        data = Path(tempfile.mkdtemp(prefix="bench-embedded-"))
        run_cfg = load_config(REPO / "configs" / "tiny.yaml", [
            f"paths.data_dir={data}", f"research.tape.path={data / 'tape.sqlite'}", "synthesis.mlflow_traces=false",
            "synthesis.concurrency=4"])
        wall, records, run_client = timed_synthesis(run_cfg, default_seeds(n_seeds))
        stats = run_client.backend.engine.stats
        workload = sum(r["usage"]["completion_tokens"] for r in records) / wall
        print(f"   d. make-run-shaped workload, {label}: {n_seeds} seeds, 4 in flight x 2 agents, multi-step, "
              f"guided: {workload:6.1f} -> {workload / ceiling:.0%} of the ceiling (target at least 60%); "
              f"{sum(r['valid'] for r in records)}/{len(records)} traces valid, {wall:.0f} s")
        print(f"      engine time: prefill {stats['prefill_s']:.0f} s ({stats['prefill_tokens']} tokens), decode "
              f"{stats['forward_s']:.0f} s ({stats['steps']} steps, {stats['rows_per_step'] / stats['steps']:.1f} "
              f"rows a step), sampling and grammar {stats['sample_s']:.0f} s, cache layout {stats['layout_s']:.0f} s")


def valid_step(text: str) -> bool:
    """An agent step the validator would take: closed blocks, think first, one usable tool call at the end."""
    from oresearcher import grammar as g

    segments, issues = g.parse_segments(text)
    call = g.last_tool_call(text)
    return (not issues and bool(segments) and segments[0].tag == g.THINK and call is not None and call.error is None
            and all(s.opened and s.closed and s.content and s.tag != g.TEXT for s in segments))


def default_seeds(n: int):
    from oresearcher.config import load_config
    from oresearcher.seeds import ingest_files

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    return ingest_files([REPO / "seeds" / "default.jsonl"], cfg.ingest).seeds[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, 100/300 for scaling")
    parser.add_argument("--latency", type=float, default=0.5,
                        help="server latency in seconds (real teacher calls take seconds; 0.5 keeps the run short)")
    parser.add_argument("--scaling-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--embedded-only", action="store_true", help="only section 4 (the embedded model)")
    args = parser.parse_args()
    if args.scaling_child:
        scaling_child(args.scaling_child, args.latency)
        return
    if args.embedded_only:
        embedded_model(args.quick)
        return
    throughput(args.latency, args.quick)
    parallel_vs_sequential(args.latency)
    scaling(0.02, (100, 300) if args.quick else (100, 1000))
    embedded_model(args.quick)


if __name__ == "__main__":
    main()

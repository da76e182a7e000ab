"""Does SFT teach the format? Unguided held-out traces of SFT checkpoints, epoch by epoch, at several temperatures.

    .venv/bin/python benchmarks/sft_effect.py --epochs 8 --eval-every 2 --temps 0.3,0.5     # ~80 min on 2 cores

Trains on the latest accepted filtered version in `data/` (what `make run` leaves) with `configs/tiny.yaml`'s SFT
settings, keeps the adapter every `--eval-every` epochs and at the end, then runs each kept model, merged, through the policy
runtime (`oresearcher.policy.rollout`, unguided, make run's rollout caps, the live local environment) on the
held-out split (`seeds/heldout.jsonl`, never trained on), `--samples` times per query. Prints, per epoch and
temperature, how many traces are format-valid (the filter's parser: no grammar or citation violation, what the
held-out table's `format valid` counts), how they stopped and which violations broke the rest. The traces go to
`--out`. A measurement for sizing `make run`'s SFT against issue 10's target, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import time
from pathlib import Path


async def rollouts(cfg, model_dir: str, queries: list[str], temperature: float) -> list:
    from models.llm import make_client
    from oresearcher.policy import rollout
    from oresearcher.research.environment import ResearchEnvironment

    env = ResearchEnvironment.from_config(cfg)
    # no response store: a benchmark's rollouts must not land in the pipeline's llm.sqlite
    mc = cfg.model.model_copy(update={"name": model_dir, "guided": False, "max_batch": len(queries),
                                      "repetition_penalty": cfg.heldout.repetition_penalty,
                                      "temperature": temperature, "max_new_tokens": cfg.rollout.max_new_tokens})
    client = make_client(mc, cache_dir=cfg.paths.cache)
    try:
        return await asyncio.gather(*(rollout(client, env, q, cfg.rollout, seed=cfg.heldout.seed + i)
                                      for i, q in enumerate(queries)))
    finally:
        await client.aclose()


def measure(cfg, label: str, model_dir: str, queries: list[str], temperature: float, out: Path) -> dict:
    """One model at one temperature: valid count, stop reasons, violation kinds; the traces to `out`."""
    from oresearcher.criteria import TraceView, mean_metrics, trace_metrics

    start = time.perf_counter()
    outs = asyncio.run(rollouts(cfg, model_dir, queries, temperature))
    kinds: collections.Counter = collections.Counter()
    rows = []
    with open(out / f"{label}-T{temperature}.jsonl", "w") as f:
        for o in outs:
            view = TraceView.of(o.query, o.trace)
            kinds.update(str(v.rule) for v in view.violations)
            rows.append(trace_metrics(view, cfg.filter.rules))
            f.write(json.dumps({"query": o.query, "trace": o.trace, "stop": o.stop_reason,
                                "violations": [str(v) for v in view.violations]}) + "\n")
    means = mean_metrics(rows)
    return {"label": label, "T": temperature, "valid": int(sum(r["valid"] for r in rows)), "n": len(rows),
            "tool_calls": means.get("tool_calls", 0.0), "citations": means.get("citations", 0.0),
            "seconds": time.perf_counter() - start, "stops": dict(collections.Counter(o.stop_reason for o in outs)),
            "violations": dict(kinds.most_common(6))}


def epoch_label(step: int, steps_per_epoch: int) -> str:
    return f"epoch-{round(step / steps_per_epoch, 2):g}"


def keep_every(out: Path, steps_per_epoch: int, every: float):
    """A Trainer callback copying each saved adapter (weights only) to `out/epoch-<k>` before rotation deletes it."""
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            shutil.copytree(Path(args.output_dir) / f"checkpoint-{state.global_step}",
                            out / epoch_label(state.global_step, steps_per_epoch),
                            ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*"),
                            dirs_exist_ok=True)
    return Keep()


def merged(adapter: Path) -> str:
    """The adapter merged into its base: the full-weights folder the local backend loads, as the registry's is."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    folder = adapter.with_name(adapter.name + "-merged")
    if not (folder / "config.json").exists():
        AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload().save_pretrained(folder)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(folder)
    return str(folder)


def main() -> None:
    from models.resolve import resolve_model
    from oresearcher.config import load_config
    from oresearcher.filtering import training_set
    from oresearcher.seeds import heldout_queries
    from oresearcher.sft import train_sft

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=2, help="evaluate the checkpoint every N epochs")
    p.add_argument("--temps", default="0.3,0.7", help="held-out sampling temperatures, comma-separated")
    p.add_argument("--samples", type=int, default=2, help="rollouts per held-out query")
    p.add_argument("--base", action="store_true", help="also measure the untrained model")
    p.add_argument("--out", default="/tmp/sft_effect")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override, e.g. sft.learning_rate=5e-4 or paths.data_dir=/elsewhere/data")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("configs/tiny.yaml", [f"sft.epochs={args.epochs}", f"research.tape.path={out}/tape.sqlite",
                                            *args.overrides])
    version, records, _ = training_set(cfg.paths.data)
    steps_per_epoch = -(-len(records) // (cfg.sft.batch_size * cfg.sft.grad_accum))
    cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"save_steps": steps_per_epoch * args.eval_every})})
    queries = heldout_queries(cfg.ingest)[: cfg.heldout.limit] * args.samples
    temps = [float(t) for t in args.temps.split(",")]

    start = time.perf_counter()
    trained = train_sft(cfg, records, out / "run", callbacks=[keep_every(out, steps_per_epoch, args.eval_every)])
    last = out / epoch_label(trained["steps"], steps_per_epoch)
    if not last.exists():  # training ended between saves (`--epochs` not a multiple, or sft.max_steps): keep the end
        shutil.copytree(trained["model_dir"], last)
    losses = trained["losses"]
    print(f"SFT on {len(records)} traces of {version}: {trained['steps']} steps in {time.perf_counter() - start:.0f}s,"
          f" loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    del trained

    models = [("base", resolve_model(cfg.model.name, cfg.paths.cache))] if args.base else []
    models += [(d.name, merged(d)) for d in sorted(out.glob("epoch-*"), key=lambda d: float(d.name[6:]))
               if not d.name.endswith("-merged")]
    results = []
    for label, folder in models:
        for t in temps:
            r = measure(cfg, label, folder, queries, t, out)
            results.append(r)
            print(f"{label} T={t}: valid {r['valid']}/{r['n']} ({r['seconds']:.0f}s) tool calls {r['tool_calls']:.2f} "
                  f"citations {r['citations']:.2f} stops {r['stops']} broken {r['violations']}", flush=True)
    print(f"\nheld-out split, {len(queries) // args.samples} queries x {args.samples}, unguided, valid traces:")
    print("  model      " + "".join(f"T={t:<8g}" for t in temps))
    for label, _ in models:
        cells = {r["T"]: f"{r['valid']}/{r['n']}" for r in results if r["label"] == label}
        print(f"  {label:<10} " + "".join(f"{cells[t]:<10}" for t in temps))


if __name__ == "__main__":
    main()

"""Does SFT teach the format? Unguided traces of the base policy and of an SFT'd copy on held-out queries, side by side.

    .venv/bin/python benchmarks/sft_effect.py --epochs 3 --lr 1e-4 --full      # ~25 min on 2 cores

Trains on the latest accepted filtered version (what `make run` leaves in data/), then runs both models through
the policy runtime (`oresearcher.policy.rollout`, unguided, over the live local environment) on the last N default
seeds, which synthesis never used. Prints, per model, the share of valid traces and the per-trace metrics of
`criteria.trace_metrics`, and the log-probability of the trace's first tag after the prompt. A measurement for
choosing SFT settings (issue 10), not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


def first_tag_logprob(model_dir: str, query: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oresearcher.sft import policy_messages

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template(policy_messages(query), add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    target = tok("<subtask_list>", add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(AutoModelForCausalLM.from_pretrained(model_dir)(
            torch.cat([ids, torch.tensor([target])], 1)).logits[0], -1)
    return sum(logp[ids.shape[1] - 1 + i, t].item() for i, t in enumerate(target))


async def rollouts(cfg, model_dir: str, queries: list[str]) -> list:
    from models.llm import make_client
    from oresearcher.policy import rollout
    from oresearcher.research.environment import ResearchEnvironment

    env = ResearchEnvironment.from_config(cfg)
    mc = cfg.model.model_copy(update={"name": model_dir, "guided": False, "max_batch": len(queries),
                                      "repetition_penalty": cfg.heldout.repetition_penalty,
                                      "temperature": cfg.heldout.temperature})
    client = make_client(mc, cache_dir=cfg.paths.cache)
    try:
        return await asyncio.gather(*(rollout(client, env, q, cfg.rollout, seed=i) for i, q in enumerate(queries)))
    finally:
        await client.aclose()


def report(label: str, cfg, model_dir: str, queries: list[str]) -> None:
    from oresearcher.criteria import TraceView, mean_metrics, trace_metrics

    start = time.perf_counter()
    outs = asyncio.run(rollouts(cfg, model_dir, queries))
    rows = [trace_metrics(TraceView.of(o.query, o.trace), cfg.filter.rules) for o in outs]
    means = {k: round(v, 3) for k, v in mean_metrics(rows).items()}
    print(f"{label}: {time.perf_counter() - start:.0f}s, first-tag log p {first_tag_logprob(model_dir, queries[0]):.2f}"
          f", stops {[o.stop_reason for o in outs]}\n  {means}", flush=True)


def main() -> None:
    from models.resolve import resolve_model
    from oresearcher.config import REPO_ROOT, load_config
    from oresearcher.filtering import training_set
    from oresearcher.sft import train_sft

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--queries", type=int, default=4, help="held-out queries: the last N default seeds")
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="per generation: the report turn of a make-run trace is 500-900 tokens")
    p.add_argument("--out", default="/tmp/sft_effect")
    p.add_argument("--skip-base", action="store_true", help="only the SFT model")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. "
                   "sft.adapter.r=32")
    args = p.parse_args()
    cfg = load_config("configs/tiny.yaml", [f"sft.epochs={args.epochs}", f"sft.learning_rate={args.lr}",
                                            f"sft.lora={not args.full}", "sft.save_steps=100000",
                                            "rollout.max_turns=12", "rollout.max_tool_calls=6",
                                            f"rollout.max_new_tokens={args.max_new_tokens}", "research.tape.mode=live",
                                            *args.overrides])
    seeds = (REPO_ROOT / cfg.ingest.default_seeds).read_text().splitlines()
    queries = [json.loads(line)["query"] for line in seeds if line.strip()][-args.queries:]
    if not args.skip_base:
        report("base", cfg, resolve_model(cfg.model.name, cfg.paths.cache), queries)
    version, records, _ = training_set(cfg.paths.data)
    start = time.perf_counter()
    out = train_sft(cfg, records, Path(args.out) / "run")
    print(f"SFT on {len(records)} traces of {version}: {out['steps']} steps in {time.perf_counter() - start:.0f}s, "
          f"loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f}", flush=True)
    model = out["trainer"].model
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged = Path(args.out) / "merged"
    model.save_pretrained(merged)
    out["trainer"].processing_class.save_pretrained(merged)
    report("sft", cfg, str(merged), queries)


if __name__ == "__main__":
    main()

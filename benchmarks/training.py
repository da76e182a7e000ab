"""Training benchmark: our SFT stage and one GRPO step against bare TRL scripts, on the same data, model and settings.

    python benchmarks/training.py [--model smollm2-135m-instruct] [--sft-steps 4] [--start checkpoints/sft-.../final]
    python benchmarks/training.py --start checkpoints/sft-.../final --sft-steps 0    # the GRPO step alone

Prints, measured side by side in one run, tokens/s and the ratio ours / bare:
1. SFT: `oresearcher.sft.train_sft` (our samples with observations masked, MLflow metrics every step into a
   temporary SQLite tracking store) against a bare `SFTTrainer` on TRL's own prompt-completion format (loss on the
   completion) with the same LoRA adapters, learning rate, precision, length and step count. Same traces: the
   latest filtered version in data/ (what `make run` leaves), or the tests' research traces when there is none.
   Each side trains twice, in the order bare, ours, ours, bare, so warm-up and drift on a shared machine fall on
   both alike.
2. GRPO, one step: `oresearcher.grpo.train_grpo` (rollouts by the policy runtime on the continuous-batching
   engine, tool calls answered by the local research environment, three reward terms with the judge) against a
   bare `GRPOTrainer` doing the same work the plain way: TRL's rollout hook with a multi-turn loop over
   `model.generate` (all open rollouts in one batch, stopped at a tool call, the environment's answer appended, the
   whole context generated from again) and a format reward. Rollouts are sampled, so the two sides' traces differ
   in length and tool calls; the number compared is tokens through the step per second (prompt, model tokens and
   observations), with each side's model tokens per rollout printed beside it. The rollouts have `make run`'s shape
   (configs/tiny.yaml: its turn, tool-call and token caps, its group size) unless the options shrink them;
   `--start` gives the trained version `make run` starts GRPO from (an SFT adapter folder), which calls tools,
   where the base does not. Both sides train that adapter on, without gradient checkpointing (TRL's default).
Our overhead is 1 - ours/bare where ours is slower; the goal is under 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def traces(cfg) -> list[dict]:
    from oresearcher.filtering import DatasetError, training_set

    try:
        _, records, _ = training_set(cfg.paths.data)
        return records
    except DatasetError:
        from traces import crawl, research_trace, search

        return [{"query": f"What caused the Black Death? ({i})",
                 "trace": research_trace([search("Black Death causes"), crawl("https://en.wikipedia.org/wiki/Plague")],
                                         [search("Black Death wages")])} for i in range(8)]


def sft_ours(cfg, records, steps: int, out: Path) -> tuple[float, int]:
    from mlflow.tracking import MlflowClient

    from oresearcher.sft import train_sft
    from oresearcher.train_metrics import MlflowMetrics

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    result = train_sft(cfg, records, out / "ours", callbacks=[MlflowMetrics(client, run_id)])
    state = result["trainer"].state
    runtime = next(h["train_runtime"] for h in state.log_history if "train_runtime" in h)
    return runtime, max(h.get("num_tokens", 0) for h in state.log_history)


def sft_bare(cfg, records, steps: int, out: Path) -> tuple[float, int]:
    """A bare TRL script: the conversation in TRL's prompt-completion format, TRL tokenizes and masks."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from models.resolve import num_layers, resolve_model
    from oresearcher.sft import policy_messages

    s = cfg.sft
    model = resolve_model(cfg.model.name, cfg.paths.cache)
    data = Dataset.from_list([{"prompt": policy_messages(r["query"]),
                               "completion": [{"role": "assistant", "content": r["trace"]}]} for r in records])
    args = SFTConfig(output_dir=str(out / "bare"), max_steps=steps, learning_rate=s.learning_rate,
                     per_device_train_batch_size=s.batch_size, max_length=s.max_length or cfg.train.max_seq_len,
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                     dataloader_num_workers=0, seed=s.seed, warmup_steps=s.warmup_ratio, bf16=cfg.train.bf16_enabled(),
                     gradient_checkpointing=False)  # TRL's default is on; ours is off: same settings on both sides
    lora = s.adapter.lora(num_layers(model))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(
        model), peft_config=lora)
    trainer.train()
    runtime = next(h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h)
    return runtime, max(h.get("num_tokens", 0) for h in trainer.state.log_history)


def grpo_ours(cfg, start: str, queries: list[str], out: Path) -> dict:
    from oresearcher.grpo import run_sync, train_grpo
    from oresearcher.judge import make_judge

    judge = make_judge(cfg, run="bench")
    try:
        result = train_grpo(cfg, start, queries, out / "grpo-ours", judge)
    finally:
        run_sync(judge.client.aclose())
    [step] = result["history"]
    return {"tokens": step["num_tokens"], "seconds": step["step_time"], "model_tokens": step["completions/mean_length"],
            "tool_calls": step["tools/calls_mean"]}


def bare_rollouts(cfg, env):
    """TRL's `rollout_func` as a bare script writes a multi-turn tool loop: `model.generate` on every open rollout
    at once until a tool call's closing tag or the report's, the environment's answer appended, the whole context
    generated from again (no cache kept between turns, `generate`'s own sampler). The same
    environment and caps as ours; no grammar module, judge, guards or tracking."""
    import asyncio

    import torch

    from oresearcher import grammar as g
    from oresearcher.agents import observe

    r = cfg.rollout

    def rollout_func(prompts: list, trainer) -> dict:
        tok, model = trainer.processing_class, trainer.model
        prompt_ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                      for p in prompts]
        written = [[] for _ in prompts]  # per rollout: (token ids, written by the model?)
        calls, open_rows = [0] * len(prompts), list(range(len(prompts)))
        for _turn in range(r.max_turns):
            if not open_rows:
                break
            contexts = [prompt_ids[i] + [t for ids, _ in written[i] for t in ids] for i in open_rows]
            width = max(map(len, contexts))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            batch = torch.tensor([[pad] * (width - len(c)) + c for c in contexts])
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
            was_training = model.training
            model.eval()
            with torch.no_grad():
                out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=r.max_new_tokens,
                                     do_sample=True, temperature=cfg.grpo.temperature, top_p=1.0, top_k=0,
                                     stop_strings=list(g.STOP_SEQUENCES), tokenizer=tok, pad_token_id=pad)
            model.train(was_training)
            still = []
            for i, row in zip(open_rows, out[:, width:].tolist(), strict=True):
                text = tok.decode(row, skip_special_tokens=True)
                end = min((text.index(s) + len(s) for s in g.STOP_SEQUENCES if s in text), default=len(text))
                text = text[:end]
                written[i].append((tok(text, add_special_tokens=False)["input_ids"], True))
                call = g.last_tool_call(text)
                if call is None or calls[i] >= r.max_tool_calls:
                    continue
                observation = asyncio.run(observe(env, call))
                calls[i] += 1
                written[i].append((tok("\n" + g.observation_text(observation) + "\n",
                                       add_special_tokens=False)["input_ids"], False))
                still.append(i)
            open_rows = still
        limit = [max(1, cfg.train.max_seq_len - len(p)) for p in prompt_ids]
        return {"prompt_ids": prompt_ids,
                "completion_ids": [[t for ids, _ in w for t in ids][:n] for w, n in zip(written, limit, strict=True)],
                "env_mask": [[int(m) for ids, m in w for _ in ids][:n] for w, n in zip(written, limit, strict=True)],
                "logprobs": None, "trace": [tok.decode([t for ids, _ in w for t in ids]) for w in written]}

    return rollout_func


def grpo_bare(cfg, start: str, queries: list[str], out: Path) -> dict:
    """A bare TRL script of the same work: `bare_rollouts` through TRL's rollout hook, a format reward."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from models.resolve import is_adapter, load_policy
    from oresearcher.criteria import TraceView, reward_terms
    from oresearcher.research.environment import ResearchEnvironment
    from oresearcher.sft import policy_messages

    g = cfg.grpo
    adapter = is_adapter(start)  # as ours: an SFT adapter trains on; a full model gets new LoRA adapters
    model, tok = load_policy(start, cfg.model.name, cfg.paths.cache, trainable=adapter)

    def fmt(prompts, completions, trace, **_):
        return [reward_terms(TraceView.of("q", t), cfg.filter.rules)["format"] for t in trace]

    args = GRPOConfig(output_dir=str(out / "grpo-bare"), max_steps=1, learning_rate=g.learning_rate, beta=g.beta,
                      num_generations=g.num_generations, per_device_train_batch_size=g.micro_batch_size,
                      gradient_accumulation_steps=g.queries_per_step * g.num_generations // g.micro_batch_size,
                      max_completion_length=cfg.train.max_seq_len, temperature=g.temperature,
                      logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                      disable_dropout=True, seed=g.seed, bf16=cfg.train.bf16_enabled(),
                      gradient_checkpointing=False)  # as ours (TRL's default is on)
    lora = None if adapter else g.adapter.lora(model.config.num_hidden_layers)
    trainer = GRPOTrainer(model=model, reward_funcs=[fmt], args=args, processing_class=tok, peft_config=lora,
                          train_dataset=Dataset.from_list([{"prompt": policy_messages(q)} for q in queries]),
                          rollout_func=bare_rollouts(cfg, ResearchEnvironment.from_config(cfg)))
    trainer.train()
    step = next(h for h in trainer.state.log_history if "num_tokens" in h)
    return {"tokens": step["num_tokens"], "seconds": step["step_time"], "model_tokens": step["completions/mean_length"]}


def ratio_line(label: str, ours_tps: float, bare_tps: float) -> str:
    ratio = ours_tps / bare_tps
    overhead = max(0.0, 1 - ratio)
    return (f"{label}: ours {ours_tps:,.0f} tokens/s, bare TRL {bare_tps:,.0f} tokens/s -> ratio {ratio:.3f} "
            f"(overhead {overhead:.1%}, goal < 5%: {'met' if overhead < 0.05 else 'NOT met'})")


def main() -> None:
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from models.resolve import resolve_model
    from oresearcher.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sft-steps", type=int, default=4, help="0: only the GRPO step")
    p.add_argument("--samples", type=int, default=4, help="traces (SFT) and rollouts of the GRPO step")
    p.add_argument("--generations", type=int, default=None, help="GRPO group size (default: the config's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="GRPO: tokens per rollout generation "
                                                                    "(default: the config's, make run's shape)")
    p.add_argument("--max-turns", type=int, default=None, help="GRPO: generations per rollout (default: the config's)")
    p.add_argument("--start", default=None, help="GRPO: the trained version to start from (default: the base model)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        shape = [f"rollout.max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []
        shape += [f"rollout.max_turns={args.max_turns}"] if args.max_turns else []
        shape += [f"grpo.num_generations={args.generations}"] if args.generations else []
        cfg = load_config(REPO / "configs" / "tiny.yaml", [
            f"model.name={args.model}", f"sft.max_steps={max(1, args.sft_steps)}", "sft.save_steps=100000",
            "grpo.max_steps=1", "grpo.save_steps=100000", *shape,
            f"research.tape.path={out / 'tape.sqlite'}", "research.tape.mode=live",
            f"paths.data_dir={REPO / 'data'}"])
        groups = max(1, args.samples // cfg.grpo.num_generations)
        cfg = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"queries_per_step": groups})})
        records = traces(cfg)[: args.samples]
        sft = f"{len(records)} traces, {args.sft_steps} SFT steps, twice each" if args.sft_steps > 0 else "no SFT"
        print(f"model {args.model}; {sft}; one GRPO step of "
              f"{groups} queries x {cfg.grpo.num_generations} rollouts (up to {cfg.rollout.max_turns} turns of "
              f"{cfg.rollout.max_new_tokens} tokens) from {args.start or 'the base model'}", flush=True)
        runs = {"bare": [], "ours": []}
        for i, side in enumerate(("bare", "ours", "ours", "bare") if args.sft_steps > 0 else ()):
            train = sft_bare if side == "bare" else sft_ours
            (out / f"sft-{i}").mkdir()
            runs[side].append(train(cfg, records, args.sft_steps, out / f"sft-{i}"))
        if args.sft_steps > 0:
            (bare_s, bare_tok), (ours_s, ours_tok) = ([sum(x) for x in zip(*runs[k], strict=True)]
                                                      for k in ("bare", "ours"))
            print(ratio_line("SFT", ours_tok / ours_s, bare_tok / bare_s), flush=True)
        start = args.start or resolve_model(args.model, cfg.paths.cache)
        queries = [r["query"] for r in records][:groups]
        ours = grpo_ours(cfg, start, queries, out)
        print(f"  ours: {ours['model_tokens']:.0f} completion tokens per rollout on average, "
              f"{ours['tool_calls']:.1f} tool calls", flush=True)
        bare = grpo_bare(cfg, start, queries, out)
        print(f"  bare: {bare['model_tokens']:.0f} completion tokens per rollout on average", flush=True)
        print(ratio_line("GRPO step", ours["tokens"] / ours["seconds"], bare["tokens"] / bare["seconds"]))
        print(json.dumps({"sft": runs, "grpo": {"ours": ours, "bare": bare}}))


if __name__ == "__main__":
    main()

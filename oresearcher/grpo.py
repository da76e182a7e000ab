"""Agentic GRPO (method.md §1 step 5, §3): the SFT'd policy writes whole traces in the research environment, and
TRL's `GRPOTrainer` moves it toward the traces that score better within each query's group.

    out = train_grpo(cfg, start_dir, queries, output_dir, judge)     # {"model_dir": ..., "guard": {...}, ...}

- **Rollouts** are the project's own runtime (`oresearcher.policy.rollout`), plugged in through TRL's
  `rollout_func`: each one searches and reads for real (through the replay tape, so a re-run sees the same pages),
  decoding with the live trainer model (`rollout_backend: trainer`) or on a `trl vllm-serve` server that TRL
  updates with the new weights each step (`vllm_server`).
- **Loss** falls on the model's own tokens only: the observations the environment inserted are `env_mask` 0.
- **Reward** R = w_judge·R_base + w_tool·R_tool + w_format·R_format, three TRL reward functions so each term is
  logged (`rewards/judge/mean`, ...). R_format and R_tool are `criteria.reward_terms` (the filter's own rules);
  R_base is the filter's judge score over its scale (a judge failure is no score: None, not a 0).
- **Guards** (`CollapseGuard`): a format pass rate that falls below a share of the first step's, or groups whose
  rewards stay all equal for N steps, stop training; the stage then keeps the last checkpoint whose rollouts were
  healthy. The decision is part of the result.
- **Resume**: checkpoints every `grpo.save_steps`; a killed run goes on from the newest complete one, and rollout
  seeds depend on the step, so the resumed steps sample what the lost ones would have.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from transformers import TrainerCallback

from models.llm import ChatRequest, ChatResponse
from oresearcher.config import GuardConfig, RulesConfig, Settings
from oresearcher.criteria import TraceView, reward_terms
from oresearcher.sft import last_checkpoint, policy_messages

TERMS = ("judge", "tool", "format")  # reward functions, in the order of `reward_weights`


# ---------------------------------------------------------------------------------------------------- rollouts

def run_sync(coro):
    """Run a coroutine to its end from the trainer's synchronous code, also when this thread already runs an event
    loop (a training flow called from the async pipeline): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class TrainerModelBackend:
    """The live model being trained, behind the one LLM client interface: a `ContinuousEngine` over its current
    weights, built per step. Its prefix cache lives as long as the step (the weights change between steps), so each
    turn of a rollout prefills only the observation it adds, not the whole trace again."""

    supports_grammar = True
    endpoint = None

    def __init__(self, model, tokenizer, max_batch: int, max_context: int, repetition_penalty: float = 1.0,
                 prefix_cache_tokens: int = 32768):
        from models.backends.continuous import ContinuousEngine

        self.model_id = "grpo-policy"
        self._attn = model.config._attn_implementation  # the engine switches it; training gets it back
        self._model = model
        # accelerate runs a mixed-precision model's forward under autocast. Decoding on a CPU there re-casts every
        # float32 weight at each token (the cast is cached only for weights that train): 4 rows of 2k tokens took
        # 210 ms a token under autocast, 135 ms without. So rollouts decode in the weights' own dtype and the
        # wrapper comes back for training (`aclose`).
        self._mixed_forward = model.__dict__.get("forward") \
            if "_original_forward" in model.__dict__ and model.device.type == "cpu" else None
        if self._mixed_forward is not None:
            model.forward = model._original_forward
        self.engine = ContinuousEngine(model, tokenizer, model_id=self.model_id, max_batch=max_batch,
                                       max_context=max_context, repetition_penalty=repetition_penalty,
                                       prefix_cache_tokens=prefix_cache_tokens)

    async def generate(self, request: ChatRequest) -> ChatResponse:
        return await self.engine.generate(request)

    async def aclose(self) -> None:
        self.engine.close()
        self._model.set_attn_implementation(self._attn)
        if self._mixed_forward is not None:
            self._model.forward = self._mixed_forward


def completion_tokens(tokenizer, segments: list[tuple[str, bool]], answered: bool, limit: int):
    """Token ids of a rollout's trace and its env_mask (1: the model wrote it, 0: the environment inserted it),
    with the end of turn after a finished report (the model learns to stop), cut at `limit` tokens."""
    ids: list[int] = []
    mask: list[int] = []
    for text, by_model in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(by_model)] * len(piece)
    if answered:
        ids.append(tokenizer.eos_token_id)
        mask.append(1)
    return ids[:limit], mask[:limit]


class PolicyRollouts:
    """TRL's `rollout_func(prompts, trainer)`: one trace per prompt (TRL repeats each query `num_generations`
    times), by the policy runtime over the research environment."""

    def __init__(self, cfg: Settings, env, make_client):
        self.cfg, self.env, self.make_client = cfg, env, make_client
        self.last: list = []  # the step's rollouts, for tests and the guard's log

    def __call__(self, prompts: list, trainer) -> dict:
        from oresearcher.policy import rollout

        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        queries = [p[-1]["content"] for p in prompts]
        # a seed per (step, row): the group's rollouts differ, and a resumed step samples what the lost one would
        rank = trainer.accelerator.process_index
        seeds = [self.cfg.grpo.seed + 1_000_003 * trainer.state.global_step + 1009 * rank + i
                 for i in range(len(queries))]

        async def run():
            client = self.make_client(model, tok, len(queries))
            try:
                return await asyncio.gather(*(rollout(client, self.env, q, self.cfg.rollout, seed=s)
                                              for q, s in zip(queries, seeds, strict=True)))
            finally:
                await client.aclose()

        was_training = model.training
        model.eval()
        try:
            outs = run_sync(run())
        finally:
            model.train(was_training)
        self.last = outs
        prompt_ids = [tok.apply_chat_template(policy_messages(q), add_generation_prompt=True, tokenize=True,
                                              return_dict=False) for q in queries]
        completions = [completion_tokens(tok, o.segments, o.stop_reason == "answered",
                                         max(1, self.cfg.train.max_seq_len - len(p)))
                       for o, p in zip(outs, prompt_ids, strict=True)]
        log_rollout_stats(trainer, outs)
        return {"prompt_ids": prompt_ids, "completion_ids": [c[0] for c in completions], "logprobs": None,
                "env_mask": [c[1] for c in completions], "query": queries, "trace": [o.trace for o in outs]}


def log_rollout_stats(trainer, outs: list) -> None:
    """The distribution of tool calls and how rollouts ended, into the step's logged metrics (TRL averages what
    `_metrics` holds at each log; a private attribute, but the one its own tool metrics use)."""
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    calls = sorted(o.tool_calls for o in outs)
    metrics["tools/calls_mean"].append(sum(calls) / len(calls))
    metrics["tools/calls_min"].append(calls[0])
    metrics["tools/calls_max"].append(calls[-1])
    metrics["tools/none_share"].append(sum(c == 0 for c in calls) / len(calls))
    for reason in ("answered", "length", "no_action", "turn_cap", "tool_cap", "error"):
        metrics[f"rollouts/{reason}_share"].append(sum(o.stop_reason == reason for o in outs) / len(outs))


# ------------------------------------------------------------------------------------------------------ reward

def judge_terms(judge, queries: list[str], traces: list[str]) -> list[float | None]:
    """R_base of each trace: its report's judge score over the scale; 0 with no report (nothing to judge, nothing
    earned); None when the judge failed or wrote no score (no verdict on the trace, so not a 0 either)."""
    reports = [TraceView.of(q, t).report for q, t in zip(queries, traces, strict=True)]

    async def score_all():
        async def one(q: str, report: str):
            return await judge.score(q, report) if report.strip() else None
        return await asyncio.gather(*(one(q, r) for q, r in zip(queries, reports, strict=True)))

    return [0.0 if score is None else None if score.value is None else score.value / judge.cfg.scale
            for score in run_sync(score_all())]


def total_reward(terms: dict[str, float | None], weights) -> float:
    """R = w_judge·R_base + w_tool·R_tool + w_format·R_format; a missing term adds nothing (as TRL sums them)."""
    return sum(getattr(weights, k) * (terms[k] or 0.0) for k in TERMS)


def reward_functions(judge, rules: RulesConfig) -> list:
    """The three reward terms as TRL reward functions (named so each is logged as `rewards/<name>/...`). TRL passes
    the rollout's extra fields (`query`, `trace`) as keyword lists."""

    def judge_term(prompts, completions, query, trace, **_) -> list[float | None]:
        return judge_terms(judge, query, trace)

    def tool_term(prompts, completions, query, trace, **_) -> list[float]:
        return [reward_terms(TraceView.of(q, t), rules)["tool"] for q, t in zip(query, trace, strict=True)]

    def format_term(prompts, completions, query, trace, **_) -> list[float]:
        return [reward_terms(TraceView.of(q, t), rules)["format"] for q, t in zip(query, trace, strict=True)]

    judge_term.__name__, tool_term.__name__, format_term.__name__ = TERMS
    return [judge_term, tool_term, format_term]


# ------------------------------------------------------------------------------------------------------ guards

class CollapseGuard(TrainerCallback):
    """Stops training when the format pass rate collapses or the reward gives no signal for N steps, and says which
    checkpoint to keep. Step s's rollouts come from the weights after step s-1, so a healthy step s vouches for
    checkpoint s-1; the keeper is the newest saved checkpoint at or before the last vouched-for step (step 0: the
    starting model, nothing new to keep). On resume the logged history replays through the same checks."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.first_format: float | None = None
        self.zero_run = 0
        self.good_step = 0
        self.decision: dict = {"stopped": False}

    def check(self, step: int, logs: dict) -> str | None:
        """The reason to stop after `step`'s log, or None; updates what the guard knows."""
        fmt = logs.get("rewards/format/mean")
        if fmt is None:
            return None
        if self.first_format is None:
            self.first_format = fmt
        self.zero_run = self.zero_run + 1 if logs.get("frac_reward_zero_std", 0.0) >= 1.0 else 0
        if self.first_format > 0 and fmt < self.cfg.min_format_ratio * self.first_format:
            return (f"format collapse: pass rate {fmt:.2f} at step {step}, under {self.cfg.min_format_ratio:.2f} of "
                    f"the first step's {self.first_format:.2f}")
        self.good_step = step - 1
        if self.zero_run >= self.cfg.zero_variance_steps:
            self.good_step = step  # equal rewards moved nothing: the newest weights are as good as any
            return f"no reward variance: every group's rewards were equal for {self.zero_run} steps"
        return None

    def on_train_begin(self, args, state, control, **kwargs):
        for entry in state.log_history:  # a resumed run: what the lost process had seen
            if "step" in entry and (reason := self.check(entry["step"], entry)):
                self._stop(reason, entry["step"], control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.decision["stopped"] and (reason := self.check(state.global_step, logs or {})):
            self._stop(reason, state.global_step, control)

    def _stop(self, reason: str, step: int, control) -> None:
        self.decision = {"stopped": True, "reason": reason, "step": step, "last_good_step": self.good_step}
        control.should_training_stop = True


def keeper(output_dir: Path, decision: dict, final_dir: Path) -> tuple[str | None, int | None]:
    """(folder, step) of the model the stage registers: the final weights, or after a tripped guard the newest
    checkpoint at or before the last good step (None: only the starting model was good)."""
    if not decision["stopped"]:
        return str(final_dir), None
    good = [(int(d.name.split("-")[1]), d) for d in Path(output_dir).glob("checkpoint-*")
            if d.name.split("-")[1].isdigit() and int(d.name.split("-")[1]) <= decision["last_good_step"]
            and (d / "trainer_state.json").is_file()]
    if not good:
        return None, 0
    step, folder = max(good)
    return str(folder), step


# ---------------------------------------------------------------------------------------------------- training

def serve_command(cfg: Settings, model: str) -> list[str]:
    """The documented `trl vllm-serve` command (`rollout_backend: vllm_server`), started before the flow on the
    rollout GPUs with the starting model: TRL pushes the trained weights into it after each step."""
    from urllib.parse import urlsplit

    url = urlsplit(cfg.grpo.vllm_server_url)
    local = url.hostname in ("127.0.0.1", "localhost")  # else the trainers reach it by name: listen beyond loopback
    return ["trl", "vllm-serve", "--model", model, "--host", url.hostname if local else "0.0.0.0",
            "--port", str(url.port or 8000),
            "--tensor-parallel-size", str(cfg.grpo.vllm_tensor_parallel), "--max-model-len",
            str(cfg.train.max_seq_len)]


def rollout_client_factory(cfg: Settings, served_model: str):
    """How each step's rollout client is made: over the live model, or the vLLM server TRL keeps in sync (serving
    `served_model`, the folder it was started with)."""
    from models.llm import make_client

    g = cfg.grpo
    policy = cfg.model.model_copy(update={"guided": False, "temperature": g.temperature,
                                          "max_new_tokens": cfg.rollout.max_new_tokens})
    if g.rollout_backend == "vllm_server":
        served = policy.model_copy(update={"backend": "openai", "base_url": g.vllm_server_url.rstrip("/") + "/v1",
                                           "served_name": served_model, "identity": "grpo-policy"})

        def remote(model, tokenizer, rows: int):
            return make_client(served, key="grpo.vllm_server_url")  # no response cache: the weights move
        return remote

    def local(model, tokenizer, rows: int):
        backend = TrainerModelBackend(model, tokenizer, max_batch=rows, max_context=cfg.model.max_context_tokens,
                                      repetition_penalty=cfg.model.repetition_penalty,
                                      prefix_cache_tokens=cfg.model.prefix_cache_tokens)
        return make_client(policy, backend=backend)
    return local


def train_grpo(cfg: Settings, start_dir: str, queries: list[str], output_dir: Path, judge, env=None,
               callbacks: list | None = None) -> dict:
    """GRPO from the trained version in `start_dir` on `queries`, resuming from the last checkpoint in
    `output_dir`. Returns the folder to register (None when a guard kept only the starting model), the guard's
    decision and the logged history."""
    import os

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from models.resolve import is_adapter, load_policy
    from oresearcher.research.environment import ResearchEnvironment

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16
    g = cfg.grpo
    env = env or ResearchEnvironment.from_config(cfg)
    adapter = is_adapter(start_dir)
    model, tokenizer = load_policy(start_dir, cfg.model.name, cfg.paths.cache, cfg.model.dtype,
                                   trainable=adapter and g.lora)
    if adapter and not g.lora:  # full-weights GRPO from an adapter version: train its merged weights
        model, adapter = model.merge_and_unload(), False
    new_adapter = g.adapter.lora(model.config.num_hidden_layers) if g.lora and not adapter else None
    w = g.reward_weights
    args = GRPOConfig(
        output_dir=str(output_dir), max_steps=g.max_steps, learning_rate=g.learning_rate, beta=g.beta,
        epsilon=g.epsilon, temperature=g.temperature, num_generations=g.num_generations,
        # one step = one generation of queries_per_step groups, trained in micro-batches (a 2k-token trace's
        # backward pass of a 135M model takes ~8 GB on CPU: four at once do not fit a laptop)
        per_device_train_batch_size=g.micro_batch_size,
        gradient_accumulation_steps=g.queries_per_step * g.num_generations // g.micro_batch_size,
        reward_weights=[w.judge, w.tool, w.format], max_completion_length=cfg.train.max_seq_len,
        logging_steps=1, save_strategy="steps", save_steps=g.save_steps, save_total_limit=None,
        report_to="none", seed=g.seed, use_cpu=not torch.cuda.is_available(), bf16=cfg.train.bf16_enabled(),
        disable_dropout=True, dataloader_num_workers=0, gradient_checkpointing=False,
        use_vllm=g.rollout_backend == "vllm_server", vllm_mode="server", vllm_server_base_url=g.vllm_server_url,
        vllm_importance_sampling_correction=False,  # the runtime's server calls return text, not sampler logprobs
        deepspeed=_deepspeed(cfg))
    guard = CollapseGuard(g.guard)
    rollouts = PolicyRollouts(cfg, env, rollout_client_factory(cfg, start_dir))
    dataset = Dataset.from_list([{"prompt": policy_messages(q)} for q in queries])
    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions(judge, cfg.filter.rules), args=args,
                          train_dataset=dataset, processing_class=tokenizer, rollout_func=rollouts,
                          peft_config=new_adapter, callbacks=[guard, *(callbacks or [])])
    resumed = last_checkpoint(output_dir)
    trainer.train(resume_from_checkpoint=resumed)
    final = Path(output_dir) / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    keep_dir, keep_step = keeper(output_dir, guard.decision, final)
    if keep_dir and keep_dir != str(final):
        tokenizer.save_pretrained(keep_dir)
    history = [h for h in trainer.state.log_history if "rewards/format/mean" in h]
    return {"model_dir": keep_dir, "kept_step": keep_step, "guard": guard.decision, "resumed_from": resumed,
            "steps": trainer.state.global_step, "history": history, "start_dir": start_dir,
            "trainer": trainer, "rollouts": rollouts}


def _deepspeed(cfg: Settings) -> str | None:
    from oresearcher.sft import deepspeed_config

    return deepspeed_config(cfg)


def summary(history: list[dict]) -> dict[str, float]:
    """First and last step's mean reward and format pass rate, for the flow's log line."""
    if not history:
        return {}
    first, last = history[0], history[-1]
    return {"reward_first": first.get("reward", 0.0), "reward_last": last.get("reward", 0.0),
            "format_first": first["rewards/format/mean"], "format_last": last["rewards/format/mean"]}


# ------------------------------------------------------------------------------------------------- launching

def entry_args(config_path: str, overrides: list[str], start_dir: str, output_dir: Path,
               run_id: str | None) -> list[str]:
    from oresearcher.launch import stage_args

    return stage_args(config_path, overrides, output_dir, run_id, start_dir=start_dir)


def run_grpo(cfg: Settings, config_path: str, overrides: list[str], start_dir: str, queries: list[str],
             output_dir: Path, callbacks: list | None = None, run_id: str | None = None) -> dict:
    """Train in this process, or as `accelerate launch` ranks under DeepSpeed (`oresearcher.launch`; rank 0 logs
    to `run_id`). The judge is the filter's (`judge.make_judge`), on the shared response cache."""
    from oresearcher.launch import distributed, run_launched

    if distributed(cfg):
        return run_launched(cfg, "oresearcher.grpo", entry_args(config_path, overrides, start_dir, output_dir, run_id),
                            output_dir)
    return _train_here(cfg, start_dir, queries, output_dir, callbacks, run_id)


def _train_here(cfg: Settings, start_dir: str, queries: list[str], output_dir: Path, callbacks: list | None,
                run_id: str | None) -> dict:
    from oresearcher.judge import make_judge

    judge = make_judge(cfg, run=run_id or "")
    try:
        out = train_grpo(cfg, start_dir, queries, output_dir, judge, callbacks=callbacks)
    finally:
        run_sync(judge.client.aclose())
    return {k: v for k, v in out.items() if k not in ("trainer", "rollouts")}


def main(argv: list[str] | None = None) -> None:
    """One GRPO process: one rank of `accelerate launch ... -m oresearcher.grpo` (the `grpo` flow builds the
    command; `oresearcher grpo --dry-run` prints it). Rank 0 logs `train/*` to the MLflow run given."""
    from oresearcher.config import load_config
    from oresearcher.launch import rank0_metrics, report, stage_parser
    from tasks.training import training_queries

    args = stage_parser("oresearcher.grpo", start_dir="the downloaded version GRPO starts from").parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    _, queries = training_queries.fn(cfg)
    callbacks = rank0_metrics(cfg, args.run_id)
    report(_train_here(cfg, args.start_dir, queries, Path(args.output_dir), callbacks, args.run_id))


if __name__ == "__main__":
    main()

"""SFT samples: a filtered trace as one assistant turn after the policy's prompt, with the environment's text
masked out of the loss (method.md §1 step 4).

    sample = sft_sample(tokenizer, query, trace)
    sample["input_ids"], sample["labels"]          # labels are -100 on the prompt and on every <observation>

The policy writes everything in a trace but the observations: the environment appends those after each tool
call, so a model trained on them would learn to invent search results. `<observation>` blocks are found by the
grammar module's parser (its segment offsets), tags included; the tokens that overlap one carry no loss. The end
of turn after the trace does carry loss, so the model learns to stop. TRL's `SFTTrainer` takes the samples as a
pre-tokenized dataset whose `labels` column it uses as is.
"""

from __future__ import annotations

from pathlib import Path

from oresearcher import grammar as g
from oresearcher.agents import prompt
from oresearcher.config import REPO_ROOT, Settings


def policy_messages(query: str) -> list[dict[str, str]]:
    """What the policy sees before it writes a trace: the same for SFT, GRPO rollouts and evaluation."""
    return [{"role": "system", "content": prompt("policy")}, {"role": "user", "content": query}]


def observation_spans(trace: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of every <observation> block in `trace`, tags included."""
    segments, _ = g.parse_segments(trace)
    return [(s.start, s.end) for s in segments if s.tag == g.OBSERVATION]


def sft_sample(tokenizer, query: str, trace: str, max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids of the whole conversation and labels that train only on what the policy writes."""
    messages = policy_messages(query)
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": trace}], tokenize=False)
    assert full.startswith(prompt_text), "the chat template must render the prompt as a prefix of the conversation"
    start = full.index(trace, len(prompt_text))
    turn_end = full.find(tokenizer.eos_token, start + len(trace))
    end = turn_end + len(tokenizer.eos_token) if turn_end >= 0 else start + len(trace)
    masked = [(start + a, start + b) for a, b in observation_spans(trace)]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        trained = start <= a and b <= end and not any(a < m_end and b > m_start for m_start, m_end in masked)
        labels.append(token if trained else -100)
    ids = enc["input_ids"]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


# ---------------------------------------------------------------------------------------------------- training

def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder a killed run left, to resume from. The trainer writes
    `trainer_state.json` after the weights, optimizer and RNG states: a folder without a readable one was cut off
    mid-save (transformers' own `get_last_checkpoint` would pick it, and resuming from it fails)."""
    import json

    folders = sorted((int(d.name.split("-")[1]), d) for d in Path(output_dir).glob("checkpoint-*")
                     if d.is_dir() and d.name.split("-")[1].isdigit())
    for _step, folder in reversed(folders):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(folder)
    return None


def deepspeed_config(cfg: Settings) -> str | None:
    """The DeepSpeed JSON for `train.deepspeed` (configs/deepspeed/<stage>.json), or None."""
    if cfg.train.deepspeed == "none":
        return None
    return str(REPO_ROOT / "configs" / "deepspeed" / f"{cfg.train.deepspeed}.json")


def train_sft(cfg: Settings, records: list[dict], output_dir: Path, callbacks: list | None = None) -> dict:
    """TRL `SFTTrainer` on `records` (filtered trace records): LoRA adapters by default, resuming from the last
    checkpoint in `output_dir`. Returns where the trained model went and the logged losses."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from models.resolve import num_layers, resolve_model

    s = cfg.sft
    model_dir = resolve_model(cfg.model.name, cfg.paths.cache)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_length = s.max_length or cfg.train.max_seq_len
    samples = [sft_sample(tokenizer, r["query"], r["trace"], max_length) for r in records]
    if short := [len(s["input_ids"]) for s in samples if all(label == -100 for label in s["labels"])]:
        raise ValueError(f"sft.max_length ({max_length}) leaves {len(short)} of {len(samples)} samples nothing to "
                         "learn: the prompt alone fills it (raise sft.max_length or train.max_seq_len)")
    dataset = Dataset.from_list(samples)
    args = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=s.epochs, max_steps=s.max_steps or -1,
        learning_rate=s.learning_rate, warmup_steps=s.warmup_ratio, per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, max_length=max_length, packing=s.packing, seed=s.seed,
        logging_steps=1, save_strategy="steps", save_steps=s.save_steps, save_total_limit=2, report_to="none",
        use_cpu=not torch.cuda.is_available(), bf16=cfg.train.bf16_enabled(), gradient_checkpointing=False,
        dataloader_num_workers=0, deepspeed=deepspeed_config(cfg))
    peft_config = s.adapter.lora(num_layers(model_dir)) if s.lora else None
    trainer = SFTTrainer(model=model_dir, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    resumed = last_checkpoint(output_dir)
    trainer.train(resume_from_checkpoint=resumed)
    final = Path(output_dir) / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"model_dir": str(final), "base_model": model_dir, "losses": losses, "resumed_from": resumed,
            "steps": trainer.state.global_step, "samples": len(dataset), "trainer": trainer}


# ------------------------------------------------------------------------------------------------- launching

def launch_command(cfg: Settings, config_path: str, overrides: list[str], dataset_version: str, output_dir: Path,
                   run_id: str | None = None) -> list[str]:
    """The training command (`oresearcher.launch`): `python -m oresearcher.sft ...`, under `accelerate launch`
    when distributed."""
    from oresearcher.launch import launch_command as command

    return command(cfg, "oresearcher.sft", _entry_args(config_path, overrides, dataset_version, output_dir, run_id))


def _entry_args(config_path: str, overrides: list[str], dataset_version: str, output_dir: Path,
                run_id: str | None) -> list[str]:
    from oresearcher.launch import stage_args

    return stage_args(config_path, overrides, output_dir, run_id, dataset=dataset_version)


def run_sft(cfg: Settings, config_path: str, overrides: list[str], dataset_version: str, records: list[dict],
            output_dir: Path, callbacks: list | None = None, run_id: str | None = None) -> dict:
    """Train in this process, or through `launch_command` when distributed (rank 0 logs to `run_id`)."""
    from oresearcher.launch import distributed, run_launched

    if not distributed(cfg):
        out = train_sft(cfg, records, output_dir, callbacks)
        out.pop("trainer")
        return out
    return run_launched(cfg, "oresearcher.sft", _entry_args(config_path, overrides, dataset_version, output_dir,
                                                             run_id), output_dir)


# ------------------------------------------------------------------------------------------ the launched process

def main(argv: list[str] | None = None) -> None:
    """One training process: `python -m oresearcher.sft` alone, or one rank of `accelerate launch ... -m
    oresearcher.sft` (the `sft` flow builds that command; `oresearcher sft --dry-run` prints it). Rank 0 logs
    `train/*` to the MLflow run given and prints the result as one JSON line."""
    from oresearcher.config import load_config
    from oresearcher.filtering import training_set
    from oresearcher.launch import rank0_metrics, report, stage_parser

    args = stage_parser("oresearcher.sft", dataset="filtered dataset version").parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    _, records, _ = training_set(cfg.paths.data, args.dataset)
    callbacks = rank0_metrics(cfg, args.run_id)
    out = train_sft(cfg, records, Path(args.output_dir), callbacks)
    out.pop("trainer")
    report(out)


if __name__ == "__main__":
    main()

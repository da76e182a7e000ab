"""GRPO mechanics on tiny models: rollouts run tool calls through the policy runtime and the real research
environment, each reward term is logged, observation tokens carry no loss, the guards stop training and pick the
checkpoint to keep, and a killed run resumes without repeating steps.

A random-init tiny model never writes a tool call, so the `parrot` fixture first fine-tunes one (full weights, the
real SFT trainer) on the opening of a valid trace until it reproduces it: its rollouts then reach `</web_search>`,
the environment answers, and the model goes on writing. Its rollouts are near-identical, which is what the
zero-variance guard is for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from traces import valid_trace

from oresearcher import grammar as g

REPO = Path(__file__).resolve().parent.parent
QUERY = "What caused the Black Death?"
CACHE = os.environ.get("ORESEARCHER_CACHE", "~/.cache/oresearcher")


@pytest.fixture(scope="module")
def parrot(tmp_path_factory):
    """A tiny model that opens every trace with the memorized subtask list, plan and first web_search."""
    from models.tiny import build_tiny_model
    from oresearcher.config import load_config
    from oresearcher.sft import train_sft

    tiny = build_tiny_model()
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"model.name={tiny}", "sft.lora=false", "sft.max_length=420", "sft.max_steps=200", "sft.learning_rate=0.01",
        "sft.warmup_ratio=0", "sft.save_steps=1000"])
    out = train_sft(cfg, [{"query": QUERY, "trace": valid_trace()}], tmp_path_factory.mktemp("parrot"))
    assert out["losses"][-1] < 0.05, out["losses"][-10:]  # memorized: what the tests below rely on
    return out["model_dir"]


def grpo_settings(settings_factory, model: str, *extra: str):
    return settings_factory(
        f"model.name={model}", f"filter.judge.model.name={model}", "filter.judge.guide.reason=20",
        "research.tape.mode=live", "rollout.max_new_tokens=96", "rollout.max_turns=3", "rollout.max_tool_calls=4", "grpo.num_generations=2",
        "grpo.queries_per_step=1", "grpo.max_steps=1", "grpo.learning_rate=0.001", "grpo.save_steps=1",
        "grpo.temperature=0.2", *extra)  # near the parrot's argmax: it reaches its memorized tool call


def run_grpo(cfg, start: str, out: Path):
    from models.llm import make_client
    from oresearcher.grpo import run_sync, train_grpo
    from oresearcher.judge import Judge

    judge = Judge(make_client(cfg.filter.judge.model, cache_dir=cfg.paths.cache), cfg.filter.judge)
    try:
        return train_grpo(cfg, start, [QUERY], out, judge)
    finally:
        run_sync(judge.client.aclose())


def test_a_grpo_step_runs_tool_calls_through_the_runtime_and_logs_each_reward_term(settings_factory, parrot,
                                                                                     tmp_path):
    cfg = grpo_settings(settings_factory, parrot)
    out = run_grpo(cfg, parrot, tmp_path / "run")
    rollouts = out["rollouts"].last
    assert len(rollouts) == 2  # one query, a group of two
    for r in rollouts:
        assert r.tool_calls >= 1
        observed = g.parse(r.trace).observations
        assert observed and "](https://en.wikipedia.org/wiki/" in observed[0]  # the local corpus answered
    [step] = out["history"]
    for term in ("judge", "tool", "format"):
        assert f"rewards/{term}/mean" in step and f"rewards/{term}/std" in step
    assert step["tools/calls_mean"] >= 1 and step["rollouts/length_share"] + step["rollouts/answered_share"] > 0
    w = cfg.grpo.reward_weights
    expected = sum(getattr(w, t) * step[f"rewards/{t}/mean"] for t in ("judge", "tool", "format"))
    assert step["reward"] == pytest.approx(expected, abs=1e-4)
    assert step["rewards/tool/mean"] > 0  # it searched: the tool rules it passes earn something
    # trained a fresh adapter over the full-weights start: only LoRA weights moved
    model = out["trainer"].model
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert (Path(out["model_dir"]) / "adapter_config.json").is_file()


def test_rollout_decoding_skips_the_trainers_autocast_and_reuses_the_previous_turn():
    """accelerate wraps a bf16 model's forward in autocast; rollouts on a CPU decode without it (float32 weights,
    no per-token re-cast), and training's forward has it again afterwards."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.llm import ChatRequest
    from models.tiny import build_tiny_model
    from oresearcher.grpo import TrainerModelBackend, run_sync

    tiny = build_tiny_model()
    # an earlier trainer in this process may have set the shared state to its own precision (fp32 where the
    # CPU has no bf16 units), and accelerate refuses to change it in place
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        model = Accelerator(cpu=True, mixed_precision="bf16").prepare(AutoModelForCausalLM.from_pretrained(tiny))
        autocast_seen: list[bool] = []
        model.model.layers[0].register_forward_pre_hook(
            lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
        backend = TrainerModelBackend(model, AutoTokenizer.from_pretrained(tiny), max_batch=1, max_context=256)
        first = run_sync(backend.generate(ChatRequest((("user", QUERY),), max_tokens=4, temperature=0.0, top_p=1.0)))
        # the next turn of the rollout continues the trace: its prefill starts from the step's cached prefix
        run_sync(backend.generate(ChatRequest((("user", QUERY), ("assistant", first.choices[0].text + " <obs>")),
                                              max_tokens=4, temperature=0.0, top_p=1.0)))
        run_sync(backend.aclose())
        assert backend.engine.prefix.hits == 1
        assert autocast_seen and not any(autocast_seen)  # prefill and every decoded token
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))
        assert autocast_seen[-1] is True  # the trainer's own forward: mixed precision as configured
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_observation_tokens_carry_no_loss(settings_factory, parrot, tmp_path):
    from transformers import AutoTokenizer

    from oresearcher.grpo import completion_tokens

    cfg = grpo_settings(settings_factory, parrot)
    out = run_grpo(cfg, parrot, tmp_path / "run")
    tok = AutoTokenizer.from_pretrained(parrot)
    rollout = out["rollouts"].last[0]
    ids, mask = completion_tokens(tok, rollout.segments, rollout.stop_reason == "answered", 10_000)
    inserted = tok.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    written = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert "<observation>" in inserted and "</observation>" in inserted
    assert "<observation>" not in written and "<web_search>" in written
    assert inserted.strip() == "".join(t for t, by_model in rollout.segments if not by_model).strip()
    # TRL counts completion length from env_mask: its logged length is the model's own tokens only
    lengths = [sum(completion_tokens(tok, r.segments, r.stop_reason == "answered", 10_000)[1])
               for r in out["rollouts"].last]
    assert out["history"][0]["completions/mean_length"] == pytest.approx(sum(lengths) / len(lengths))


def test_the_zero_variance_guard_stops_training_and_keeps_the_newest_weights(settings_factory, parrot, tmp_path):
    """The parrot's rollouts all earn the same reward: no signal. With the guard at 2 steps, a 5-step run stops
    after step 2, says why, and keeps step 2's checkpoint."""
    cfg = grpo_settings(settings_factory, parrot, "grpo.max_steps=5", "grpo.guard.zero_variance_steps=2",
                        "grpo.temperature=0.01")
    out = run_grpo(cfg, parrot, tmp_path / "run")
    assert out["steps"] == 2, out["history"]
    assert out["guard"]["stopped"] and "no reward variance" in out["guard"]["reason"]
    assert out["kept_step"] == 2 and out["model_dir"].endswith("checkpoint-2")


def test_a_format_collapse_keeps_the_last_checkpoint_whose_rollouts_were_healthy(tmp_path):
    from oresearcher.config import GuardConfig
    from oresearcher.grpo import CollapseGuard, keeper

    guard = CollapseGuard(GuardConfig(min_format_ratio=0.5, zero_variance_steps=3))
    logs = [{"rewards/format/mean": r, "frac_reward_zero_std": 0.0} for r in (0.8, 0.7, 0.6, 0.3)]
    assert [guard.check(step, log) for step, log in enumerate(logs[:3], 1)] == [None, None, None]
    reason = guard.check(4, logs[3])
    assert reason and "format collapse" in reason
    assert guard.good_step == 2  # step 3's healthy rollouts came from checkpoint 2; step 4's from checkpoint 3
    guard._stop(reason, 4, type("Control", (), {"should_training_stop": False})())
    for step in (1, 2, 3, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert keeper(tmp_path, guard.decision, tmp_path / "final") == (str(tmp_path / "checkpoint-2"), 2)
    # without a checkpoint at or before the last good step, only the starting model was good: nothing to register
    assert keeper(tmp_path, {**guard.decision, "last_good_step": 0}, tmp_path / "final") == (None, 0)
    # and a run that was never stopped keeps its final weights
    assert keeper(tmp_path, {"stopped": False}, tmp_path / "final") == (str(tmp_path / "final"), None)


def test_zero_variance_counts_only_consecutive_steps():
    from oresearcher.config import GuardConfig
    from oresearcher.grpo import CollapseGuard

    guard = CollapseGuard(GuardConfig(zero_variance_steps=2))
    flat, varied = {"rewards/format/mean": 0.5, "frac_reward_zero_std": 1.0}, {"rewards/format/mean": 0.5,
                                                                               "frac_reward_zero_std": 0.5}
    assert [guard.check(s, log) for s, log in enumerate([flat, varied, flat], 1)] == [None, None, None]
    assert "no reward variance" in guard.check(4, flat)


TRAIN = str(REPO / "tests" / "train_until_killed.py")


def test_a_killed_grpo_run_resumes_from_its_last_checkpoint_without_repeating_steps(parrot, tmp_path):
    overrides = [f"model.name={parrot}", f"filter.judge.model.name={parrot}", "filter.judge.guide.reason=20",
                 "research.tape.mode=live", f"research.tape.path={tmp_path / 'tape.sqlite'}",
                 "rollout.max_new_tokens=96", "rollout.max_turns=3", "rollout.max_tool_calls=4", "grpo.num_generations=2",
                 "grpo.queries_per_step=1", "grpo.max_steps=4", "grpo.save_steps=1", "grpo.guard.zero_variance_steps=9",
                 "grpo.temperature=0.2",
                 f"paths.cache_dir={CACHE}", f"paths.data_dir={tmp_path / 'data'}"]
    cmd = [sys.executable, TRAIN, "grpo", json.dumps(overrides), str(tmp_path / "run"), parrot]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    for line in first.stdout:
        if not line.startswith('{"'):  # the trainer prints its own log dicts too
            continue
        if json.loads(line).get("step", 0) >= 2 and (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").exists():
            break
        assert time.monotonic() < deadline
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    events = [json.loads(line) for line in second.stdout.splitlines() if line.startswith('{"')]
    steps = [e["step"] for e in events if "step" in e]
    assert steps[0] > 2 and steps[-1] == 4, steps  # went on after the saved step; nothing before it again
    assert events[-1]["done"] == 4 and events[-1]["resumed_from"].endswith(tuple(f"checkpoint-{s}" for s in (2, 3)))
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "rewards/format/mean" in h]
    assert logged == sorted(set(logged)) == [1, 2, 3, 4]  # each step's rollouts logged once, on disk

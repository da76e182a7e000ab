"""SFT mechanics on the tiny random-init model: the loss falls, only adapter weights move, and a run killed midway
resumes from its last checkpoint without repeating the steps it finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from traces import valid_trace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    from models.tiny import build_tiny_model

    return build_tiny_model()


def records(n: int = 4) -> list[dict]:
    return [{"query": f"What caused the Black Death? ({i})", "trace": valid_trace()} for i in range(n)]


def settings(settings_factory, tiny, *extra: str):
    return settings_factory(f"model.name={tiny}", "sft.learning_rate=0.01", "sft.warmup_ratio=0", *extra)


def test_lora_sft_lowers_the_loss_and_moves_only_adapter_weights(settings_factory, tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from oresearcher.sft import train_sft

    out = train_sft(settings(settings_factory, tiny, "sft.max_steps=6"), records(), tmp_path / "run")
    losses = out["losses"]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    model = out["trainer"].model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    merged_names = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                    for n, p in model.named_parameters() if "lora_" not in n}
    assert set(base) >= set(merged_names)
    assert all(torch.equal(base[n], p.detach()) for n, p in merged_names.items())  # the base is untouched
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # adapters learned
    assert (Path(out["model_dir"]) / "adapter_config.json").is_file()


def test_adapters_in_the_top_layers_only_train_there(settings_factory, tiny, tmp_path):
    from models.resolve import num_layers
    from oresearcher.sft import train_sft

    top = num_layers(tiny) - 1
    out = train_sft(settings(settings_factory, tiny, "sft.max_steps=2", "sft.adapter.top_layers=1"), records(2),
                    tmp_path / "run")
    trainable = [n for n, p in out["trainer"].model.named_parameters() if p.requires_grad]
    assert trainable and all(f".layers.{top}." in n for n in trainable), trainable
    saved = json.loads((Path(out["model_dir"]) / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [top]  # the registered version loads back with the same layout


TRAIN = str(REPO / "tests" / "train_until_killed.py")


def test_a_killed_run_resumes_from_its_last_checkpoint_without_repeating_steps(tiny, tmp_path):
    overrides = [f"model.name={tiny}", "sft.max_steps=12", "sft.save_steps=2", "sft.learning_rate=0.01",
                 f"paths.cache_dir={os.environ.get('ORESEARCHER_CACHE', '~/.cache/oresearcher')}"]
    cmd = [sys.executable, TRAIN, "sft", json.dumps(overrides), str(tmp_path / "run")]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "checkpoint-4").is_dir():  # pulled as the second checkpoint is being written
        assert first.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = [json.loads(line)["step"] for line in first.stdout.read().splitlines() if '"step"' in line]
    assert done_before and max(done_before) < 12
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [json.loads(line) for line in second.stdout.splitlines() if line.startswith('{"')]  # not the trainer's logs
    resumed = next(x for x in lines if "done" in x)
    checkpoint = int(Path(resumed["resumed_from"]).name.split("-")[1])
    assert checkpoint >= 2 and resumed["done"] == 12  # the newest complete checkpoint, never a half-written one
    assert [x["step"] for x in lines if "step" in x] == list(range(checkpoint + 1, 13))  # no finished step again


def test_a_checkpoint_cut_off_mid_save_is_not_resumed_from(tmp_path):
    from oresearcher.sft import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, state in ((2, '{"global_step": 2}'), (4, None), (6, '{"global_')):  # 4: no state yet; 6: torn
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


@pytest.mark.slow
def test_zero3_across_two_cpu_processes_through_the_sft_launch_path(tiny, tmp_path):
    """The `sft` stage's own distributed path: `accelerate launch` with configs/accelerate/zero3.yaml (DeepSpeed
    ZeRO-3), two ranks over gloo; both train, and the saved checkpoint loads back onto the base model."""
    import torch
    from checkout import free_port
    from peft import PeftModel
    from traces import write_filtered_version
    from transformers import AutoModelForCausalLM

    from oresearcher.config import load_config
    from oresearcher.launch import LaunchStalled
    from oresearcher.sft import launch_command, run_sft

    def launch_once(config: str, overrides: list[str], recs: list[dict], out_dir: Path) -> dict:
        overrides = [*overrides, f"train.main_process_port={free_port()}"]
        return run_sft(load_config(config, overrides), config, overrides, "v1", recs, out_dir)

    data = tmp_path / "data"
    recs = write_filtered_version(data, "accepted", n=4)
    config = str(REPO / "configs" / "tiny.yaml")
    overrides = [f"paths.data_dir={data}", f"model.name={tiny}", "train.deepspeed=zero3", "train.num_processes=2",
                 "sft.max_steps=3", "sft.learning_rate=0.01", "sft.warmup_ratio=0",
                 "train.launch_stall_timeout_s=240"]  # a normal run is never quiet for more than a minute
    cfg = load_config(config, overrides)
    assert launch_command(cfg, config, overrides, "v1", tmp_path / "out")[1:3] == ["-m", "accelerate.commands.launch"]
    try:
        out = launch_once(config, overrides, recs, tmp_path / "out")
    except LaunchStalled as stalled:
        # Once in CI the two ranks hung for 10 minutes (never seen here in dozens of runs). A second stall fails
        # the test; the first one's stacks are kept in the warnings summary for whoever finds out why.
        warnings.warn(f"ZeRO-3 launch stalled once, retried: {stalled}", stacklevel=2)
        out = launch_once(config, overrides, recs, tmp_path / "out2")
    assert out["ranks"] == [0, 1] and out["world_size"] == 2 and out["steps"] == 3
    assert len(out["losses"]) == 3
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out["model_dir"])
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the gathered (not sharded-empty) adapters
    ids = torch.tensor([[1, 2, 3]])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)

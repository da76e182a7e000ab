"""A tiny random-init model with the embedded model's architecture and tokenizer, for fast mechanical tests.

Same config class and tokenizer (chat template included) as SmolLM2-135M-Instruct, a fraction of its width and
depth: a training or generation step takes milliseconds, and any code path that works on it works on the real
model. Its outputs are noise, so tests on it assert mechanics (shapes, masks, losses, checkpoints), not text.
"""

from __future__ import annotations

from pathlib import Path

from models.resolve import default_cache, model_revision, resolve_model
from oresearcher.store import atomic_dir


def build_tiny_model(target: Path | None = None, *, base: str = "smollm2-135m-instruct", hidden_size: int = 64,
                     num_layers: int = 2, num_heads: int = 4, seed: int = 0, cache_dir: Path | None = None) -> str:
    """Write (once) and return the directory of a tiny random-init copy of `base`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    revision = model_revision(base, cache_dir)  # a new conversion of the base (its tokenizer) means a new tiny copy
    target = target or (cache_dir or default_cache()) / "models" / \
        f"tiny-{base}-{revision}-h{hidden_size}-l{num_layers}-s{seed}"
    if (target / "config.json").exists():
        return str(target)
    base_dir = resolve_model(base, cache_dir)
    config = AutoConfig.from_pretrained(base_dir)
    config.update({"hidden_size": hidden_size, "intermediate_size": hidden_size * 4,
                   "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
                   "num_key_value_heads": num_heads, "head_dim": hidden_size // num_heads})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    return str(target)

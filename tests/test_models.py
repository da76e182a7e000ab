"""Model resolution: the embedded SmolLM2 from its GGUF, local directories, Hugging Face ids; the tiny model."""

from __future__ import annotations

import pytest

from models.resolve import ModelNotFound, resolve_model
from models.tiny import build_tiny_model


def test_tiny_model_has_the_real_architecture_and_tokenizer():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model()
    real = resolve_model("smollm2-135m-instruct")
    tok, real_tok = AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(real)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.get_vocab() == real_tok.get_vocab() and tok.chat_template == real_tok.chat_template
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    loss = model(input_ids=out, labels=out).loss
    assert torch.isfinite(loss)


def test_resolve_passes_through_dirs_and_hub_ids(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-72B-Instruct") == "Qwen/Qwen2.5-72B-Instruct"
    with pytest.raises(ModelNotFound, match="not found"):
        resolve_model(str(tmp_path / "missing"))


@pytest.mark.slow
def test_embedded_smollm2_answers_from_converted_safetensors():
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(resolve_model("smollm2-135m-instruct"))
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok.apply_chat_template([{"role": "user", "content": "What caused the Black Death?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=30, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).lower()
    assert any(w in answer for w in ("plague", "yersinia", "bacteri", "flea")), answer

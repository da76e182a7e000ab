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


def test_converted_tokenizer_ends_turns_with_im_end_everywhere():
    """EOS, padding, the chat template's end of turn and the generation config agree: `<|im_end|>`."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    path = Path(resolve_model("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == end == 2 and tok.pad_token_id == end
    for name in ("config.json", "generation_config.json"):
        assert json.loads((path / name).read_text())["eos_token_id"] == end, name
    turn = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                   tokenize=False)
    assert turn.endswith("hello<|im_end|>\n")


def test_a_grammar_engine_reads_the_converted_tokenizer_as_text():
    """llguidance builds its token table from tokenizer.json: every token's bytes must be the bytes the model's
    tokenizer means by it, so that a newline is a newline to the grammar, not the symbol 'Ċ'."""
    from pathlib import Path

    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tok = AutoTokenizer.from_pretrained(Path(resolve_model("smollm2-135m-instruct")))
    engine = llguidance.hf.from_tokenizer(tok)
    assert engine.eos_token == tok.eos_token_id
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = set(tok.all_special_ids) | {i for t, i in tok.get_vocab().items() if t.startswith("<|")}
    for token, i in tok.get_vocab().items():
        if i not in special:
            assert engine.decode_bytes([i]) == bytes(byte_of[ch] for ch in token), (i, token)
    text = "Line one\n  two\tand 你好, café.\n<think>\nok\n</think>"
    ids = tok.encode(text, add_special_tokens=False)
    assert engine.decode_str(ids) == tok.decode(ids) == text
    grammar = llguidance.grammar_from("gbnf", 'root ::= "<think>\\n" [^<]{1,20} "\\n</think>"')
    matcher = llguidance.LLMatcher(engine, grammar)
    assert matcher.consume_tokens(tok.encode("<think>\nok two\n</think>", add_special_tokens=False))
    assert matcher.is_accepting(), matcher.get_error()

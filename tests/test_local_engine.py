"""The in-process engine: continuous batching gives exactly what plain `generate` gives, reuses cached prefixes,
holds a request to its grammar, and keeps serving when one request fails. Mechanics on the tiny random model;
guided agent steps on the real SmolLM2."""

from __future__ import annotations

import asyncio

import pytest

from models.llm import ChatRequest, LLMError

PROMPTS = [(("user", "Tell me about the sea."),),
           (("system", "You are terse."), ("user", "Name three metals, with a sentence about each one of them.")),
           (("user", "Why is the sky blue? Explain it to a child who asks a lot of questions every day."),),
           (("user", "hi"),)]


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.tiny import build_tiny_model

    path = build_tiny_model()
    tok = AutoTokenizer.from_pretrained(path)
    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
            AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok)


def engine_for(model, tok, **kw):
    from models.backends.continuous import ContinuousEngine

    return ContinuousEngine(model, tok, model_id="test", max_batch=kw.pop("max_batch", 8), max_context=1024, **kw)


def run(engine, requests):
    async def go():
        return await asyncio.gather(*[engine.generate(r) for r in requests], return_exceptions=True)

    return asyncio.run(go())


def reference(model, tok, messages, n: int) -> str:
    """Plain transformers generate, greedy, one prompt at a time, default attention: the ground truth."""
    import torch

    enc = tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_batched_greedy_equals_plain_generate_one_by_one(tiny):
    model, plain, tok = tiny
    engine = engine_for(model, tok)
    lengths = [24, 40, 8, 31]  # rows finish at different steps and leave the batch
    responses = run(engine, [ChatRequest(p, n, 0.0, 1.0) for p, n in zip(PROMPTS, lengths, strict=True)])
    for p, n, resp in zip(PROMPTS, lengths, responses, strict=True):
        assert resp.text == reference(plain, tok, p, n)
        assert resp.completion_tokens <= n and resp.model == "test" and not resp.guided
    assert engine.stats["rows_per_step"] / engine.stats["steps"] > 2  # they were decoded together
    engine.close()


def test_a_request_joining_mid_decode_and_prefix_reuse_change_nothing(tiny):
    model, plain, tok = tiny
    engine = engine_for(model, tok)
    first = ChatRequest(PROMPTS[1], 40, 0.0, 1.0)

    async def staggered():
        a = asyncio.ensure_future(engine.generate(first))
        await asyncio.sleep(0.05)  # the first is decoding when the others arrive
        rest = await asyncio.gather(*[engine.generate(ChatRequest(p, 20, 0.0, 1.0)) for p in PROMPTS[2:]])
        return [await a, *rest]

    out = asyncio.run(staggered())
    assert out[0].text == reference(plain, tok, PROMPTS[1], 40)
    assert [r.text for r in out[1:]] == [reference(plain, tok, p, 20) for p in PROMPTS[2:]]
    # The next turn of the first conversation starts from its cached prefix: same answer, less prefill.
    follow = (*PROMPTS[1], ("assistant", out[0].text), ("user", "And a fourth?"))
    before = engine.stats["prefill_tokens"]
    (again,) = run(engine, [ChatRequest(follow, 16, 0.0, 1.0)])
    assert again.text == reference(plain, tok, follow, 16)
    assert engine.prefix.hits >= 1 and engine.stats["prefill_tokens"] - before < again.prompt_tokens // 2
    engine.close()


def test_sampling_is_seeded_per_request_and_choices_differ(tiny):
    """Each run on a fresh engine: the same computation each time. (Near-uniform random-init logits sample
    differently after any last-bit difference: on some CPUs a prefix-cache hit, or BLAS blocking a 1-row and a
    3-row matmul differently, gives one, with no engine at fault; greedy equality is tested above.)"""
    model, _, tok = tiny

    def fresh_run(requests):
        engine = engine_for(model, tok)
        try:
            return run(engine, requests)
        finally:
            engine.close()

    request = ChatRequest(PROMPTS[0], 12, 1.0, 0.95, n=2, seed=7)
    (alone,) = fresh_run([request])
    (again,) = fresh_run([request])
    assert len(alone.choices) == 2 and alone.choices[0].text != alone.choices[1].text
    assert [c.text for c in again.choices] == [c.text for c in alone.choices]  # seeded: the same choices
    (other_seed,) = fresh_run([ChatRequest(PROMPTS[0], 12, 1.0, 0.95, n=2, seed=8)])
    assert [c.text for c in other_seed.choices] != [c.text for c in alone.choices]
    # A batch-mate's own sampling changes nothing in this request's choices: two batches of the same shapes whose
    # mates differ only in their seed.
    with_mate = [fresh_run([request, ChatRequest(PROMPTS[2], 12, 1.0, 0.95, seed=mate)]) for mate in (1, 2)]
    assert with_mate[0][1].text != with_mate[1][1].text  # the mates did sample differently
    assert [c.text for c in with_mate[0][0].choices] == [c.text for c in with_mate[1][0].choices]


def test_stop_strings_grammar_and_errors(tiny):
    model, _, tok = tiny
    engine = engine_for(model, tok)
    guided = ChatRequest(PROMPTS[0], 64, 1.0, 1.0, seed=3, grammar='root ::= "<think>" [a-z ]{1,20} "</think>"')
    broken = ChatRequest(PROMPTS[0], 16, 1.0, 1.0, grammar="root ::= this is not gbnf")
    too_long = ChatRequest((("user", "word " * 1100),), 16, 0.0, 1.0)
    stopped = ChatRequest(PROMPTS[1], 40, 0.0, 1.0, stop=("\n",))  # the tiny model's noise is full of newlines
    g_resp, b_resp, l_resp, s_resp = run(engine, [guided, broken, too_long, stopped])
    import re

    assert g_resp.guided and re.fullmatch(r"<think>[a-z ]{1,20}</think>", g_resp.text), g_resp.text
    assert g_resp.choices[0].finish_reason == "stop"
    assert isinstance(b_resp, LLMError) and "invalid grammar" in str(b_resp)
    assert isinstance(l_resp, LLMError) and "exceeds the 1024-token context" in str(l_resp)
    assert s_resp.choices[0].stop_sequence == "\n" and "\n" not in s_resp.text
    (after,) = run(engine, [ChatRequest(PROMPTS[3], 4, 0.0, 1.0)])  # the engine still serves
    assert after.completion_tokens >= 1
    engine.close()


@pytest.mark.slow
def test_guided_steps_of_the_real_model_are_valid_for_every_seed():
    """One agent step per seed, guided, on SmolLM2-135M, generated together: each is a well-formed step (think, an
    optional plan, one valid tool call), where unguided the same model rarely writes one."""
    from models.llm import make_client
    from oresearcher import grammar as g
    from oresearcher.agents import prompt
    from oresearcher.config import load_config
    from oresearcher.seeds import ingest_files

    cfg = load_config("configs/tiny.yaml")
    client = make_client(cfg.synthesis.teacher)
    seeds = ingest_files([cfg.paths.resolve(cfg.ingest.default_seeds)], cfg.ingest).seeds[:6]
    guide = g.step_guide([], caps=cfg.synthesis.guide)
    asks = [[{"role": "system", "content": prompt("subtask_agent")},
             {"role": "user", "content": f"Research question: {s.query}\nYour subtask: {s.query}"}] for s in seeds]

    async def go():
        try:
            return await asyncio.gather(*[client.chat(a, seed=i, guide=guide) for i, a in enumerate(asks)])
        finally:
            await client.aclose()

    for resp in asyncio.run(go()):
        assert resp.guided and resp.choices[0].finish_reason == "stop"
        segments, issues = g.parse_segments(resp.text)
        assert not issues and [s.tag for s in segments][0] == g.THINK and segments[-1].tag == g.WEB_SEARCH
        assert all(s.closed and s.opened and s.content for s in segments)
        call = g.last_tool_call(resp.text)
        assert call is not None and call.error is None and call.args, resp.text


def test_a_failing_decode_step_fails_the_requests_in_flight_not_the_engine(tiny, monkeypatch):
    model, _, tok = tiny
    engine = engine_for(model, tok)
    real = engine._decode_step
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory (simulated)")
        real()

    monkeypatch.setattr(engine, "_decode_step", flaky)
    (failed,) = run(engine, [ChatRequest(PROMPTS[0], 16, 0.0, 1.0)])
    assert isinstance(failed, LLMError) and "out of memory" in str(failed)
    (after,) = run(engine, [ChatRequest(PROMPTS[3], 4, 0.0, 1.0)])  # the loop survived; it serves the next one
    assert after.completion_tokens >= 1 and engine.rows == []
    engine.close()

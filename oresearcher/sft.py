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

from oresearcher import grammar as g
from oresearcher.agents import prompt


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

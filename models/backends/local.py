"""transformers in-process (the embedded default), with dynamic batching (see `batching.py`).

Left-padded batches through `model.generate`, stop sequences via `stop_strings`, and the text returned
without its stop sequence (as OpenAI-compatible servers do) but with `stop_sequence` saying which matched.
"""

from __future__ import annotations

import threading
from pathlib import Path

from models.backends.batching import BatchingBackend
from models.llm import ChatRequest, ChatResponse, Choice, LLMError
from models.resolve import model_identity


class LocalBackend(BatchingBackend):
    def __init__(self, cfg, cache_dir: Path | None = None):
        super().__init__(cfg.max_batch, cfg.batch_window_ms)
        self.cfg, self.cache_dir = cfg, cache_dir
        self.model_id = model_identity(cfg, cache_dir)
        self._model = self._tokenizer = None
        self._load_lock = threading.Lock()

    def _load(self):
        with self._load_lock:
            if self._model is None:
                import torch

                from models.resolve import load_model_and_tokenizer

                torch.set_num_threads(max(1, torch.get_num_threads()))
                model, tok = load_model_and_tokenizer(self.cfg.name, self.cache_dir, self.cfg.dtype)
                tok.padding_side = "left"
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                model.eval()
                self._model, self._tokenizer = model, tok
        return self._model, self._tokenizer

    def generate_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        import torch

        model, tok = self._load()
        first = requests[0]
        prompts = [tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=not r.prefill,
                                           continue_final_message=r.prefill) for r in requests]
        expanded = [p for p, r in zip(prompts, requests, strict=True) for _ in range(r.n)]
        enc = tok(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        max_new = max(r.max_tokens for r in requests)
        if max(prompt_lens) + max_new > self.cfg.max_context_tokens:
            too_long = [i for i, n in enumerate(prompt_lens) if n + max_new > self.cfg.max_context_tokens]
            if len(too_long) == len(prompt_lens) or len(requests) == 1:
                raise LLMError(f"prompt of {max(prompt_lens)} tokens + {max_new} new exceeds the "
                               f"{self.cfg.max_context_tokens}-token context")
            # Mixed batch: run the ones that fit alone so one long prompt does not fail its neighbours.
            return [self.generate_batch([r])[0] if self._fits(r, tok) else _context_error(self.cfg)
                    for r in requests]
        sample = first.temperature > 0
        kwargs = {"do_sample": sample, "max_new_tokens": max_new, "pad_token_id": tok.pad_token_id,
                  "repetition_penalty": self.cfg.repetition_penalty}
        if sample:
            kwargs.update(temperature=first.temperature, top_p=first.top_p)
            torch.manual_seed(hash(tuple(r.seed for r in requests)) & 0xFFFFFFFF)
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=tok)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        results, row = [], 0
        for r in requests:
            choices, completion_tokens = [], 0
            for _ in range(r.n):
                choice, n_tok = self._decode(new_tokens[row], r, tok)
                choices.append(choice)
                completion_tokens += n_tok
                row += 1
            results.append(ChatResponse(choices, int(prompt_lens[row - 1]), completion_tokens, self.model_id))
        return results

    def _fits(self, r: ChatRequest, tok) -> bool:
        text = tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=not r.prefill,
                                       continue_final_message=r.prefill)
        return len(tok(text, add_special_tokens=False)["input_ids"]) + r.max_tokens <= self.cfg.max_context_tokens

    def _decode(self, ids, r: ChatRequest, tok) -> tuple[Choice, int]:
        ids = ids.tolist()[: r.max_tokens]
        ended_eos = False
        for stop_id in (tok.eos_token_id, tok.pad_token_id):
            if stop_id is not None and stop_id in ids:
                ids, ended_eos = ids[: ids.index(stop_id)], True
        text = tok.decode(ids, skip_special_tokens=True)
        hits = [(text.find(s), s) for s in r.stop if s in text]
        if hits:
            pos, stop = min(hits)
            return Choice(text[:pos], "stop", stop), len(tok(text[: pos + len(stop)], add_special_tokens=False)
                                                         ["input_ids"])
        return Choice(text, "stop" if ended_eos else "length"), len(ids)


def _context_error(cfg) -> LLMError:
    return LLMError(f"prompt exceeds the {cfg.max_context_tokens}-token context")

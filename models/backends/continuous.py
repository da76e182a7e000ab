"""Continuous batching for the in-process model: one scheduling loop; requests join and leave between decode steps.

Why not `model.generate` per batch (the earlier dynamic batcher): the agents' requests arrive staggered and each
generate call waits for its longest member, so `make run`'s workload made 15.5 tokens/s where an 8-way batch of
equal prompts makes 111.8. Why not transformers' continuous-batching API: its per-request logits processing is
temperature, top-k and top-p; every call here carries its own grammar.

The loop runs in one thread:
1. **admit** queued requests while there is room (`max_batch` rows; a request with n choices takes n rows). Each
   prompt is prefilled alone, reusing the key/value cache of the longest token prefix seen before (`PrefixCache`:
   an agent's next step extends its previous one, and all agents share a system prompt), then joins the batch;
2. **decode** one token for every row: one forward pass over the shared cache, rows left-padded to one length,
   each with its own positions;
3. **sample** per row: its grammar's token mask (llguidance), repetition penalty, temperature, top-p, from its own
   seeded generator. A row ends on an end-of-turn token, when its grammar is complete, on a stop string, or at
   its token limit; its caller's future resolves and its cache is kept for reuse.
The cache lives in preallocated buffers that grow by doubling (`_BufferLayer`), so a decode step writes one
column instead of copying the whole cache as `torch.cat` would.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from models.llm import ChatRequest, ChatResponse, Choice, LLMError


@dataclass
class _Row:
    """One sequence being generated: a request's choice."""

    request: ChatRequest
    choice: int
    prompt: list[int]
    generator: object  # torch.Generator
    matcher: object | None = None  # llguidance.LLMatcher
    out: list[int] = field(default_factory=list)
    finish: str | None = None  # "stop" | "length" | "error"
    stop_sequence: str | None = None
    text: str = ""


@dataclass
class _Job:
    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    rows: list[_Row] = field(default_factory=list)


class PrefixCache:
    """Key/value caches of token sequences seen before, least recently used first out, within a token budget."""

    def __init__(self, budget_tokens: int, min_reuse: int = 16):
        self.budget, self.min_reuse = budget_tokens, min_reuse
        self.entries: OrderedDict[int, tuple[object, list]] = OrderedDict()  # id -> (token tensor, [(k, v)])
        self.tokens = 0
        self.hits = self.reused_tokens = self.lookups = 0
        self._next = 0

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0

    def lookup(self, ids) -> tuple[list, int]:
        """The cached (k, v) per layer of the longest prefix of `ids` (a 1-D LongTensor) held here, and its length;
        at most len(ids) - 1 tokens, so that the last prompt token is always computed (its logits start decoding)."""
        self.lookups += 1
        best, best_len = None, 0
        for key, (tokens, _kv) in self.entries.items():
            n = min(len(tokens), len(ids) - 1)
            if n <= best_len:
                continue
            diff = (tokens[:n] != ids[:n]).nonzero()
            common = int(diff[0]) if len(diff) else n
            if common > best_len:
                best, best_len = key, common
        if best is None or best_len < self.min_reuse:
            return [], 0
        self.entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_len
        _tokens, kv = self.entries[best]
        return [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in kv], best_len

    def store(self, ids, kv: list) -> None:
        """Keep `kv` ([(k, v)] per layer, each [1, heads, len(ids), dim]) for `ids`, unless a held entry covers it."""
        n = len(ids)
        if n < self.min_reuse or n > self.budget:
            return
        for key, (tokens, _kv) in list(self.entries.items()):
            if len(tokens) >= n and bool((tokens[:n] == ids).all()):
                self.entries.move_to_end(key)
                return  # already held, as part of a longer sequence
            if len(tokens) < n and bool((ids[: len(tokens)] == tokens).all()):
                self._drop(key)  # the new sequence extends this one
        self._next += 1
        self.entries[self._next] = (ids.clone(), [(k.clone(), v.clone()) for k, v in kv])
        self.tokens += n
        while self.tokens > self.budget:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: int) -> None:
        tokens, _kv = self.entries.pop(key)
        self.tokens -= len(tokens)


def _buffer_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _BufferLayer(DynamicLayer):
        """A cache layer over preallocated buffers [batch, heads, capacity, dim]: an update writes its columns in
        place and returns views, instead of concatenating (a full copy of the cache per decode step)."""

        def set(self, k_buf, v_buf, length: int) -> None:
            self.k_buf, self.v_buf, self.length = k_buf, v_buf, length
            self.dtype, self.device, self.is_initialized = k_buf.dtype, k_buf.device, True
            self.keys, self.values = k_buf[:, :, :length], v_buf[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            n = key_states.shape[-2]
            if self.length + n > self.k_buf.shape[-2]:  # grow by doubling (rare: capacity has headroom)
                cap = max(2 * self.k_buf.shape[-2], self.length + n)
                grown = [torch.zeros((*b.shape[:2], cap, b.shape[-1]), dtype=b.dtype) for b in (self.k_buf, self.v_buf)]
                for new, old in zip(grown, (self.k_buf, self.v_buf), strict=True):
                    new[:, :, : self.length] = old[:, :, : self.length]
                self.k_buf, self.v_buf = grown
            self.k_buf[:, :, self.length : self.length + n] = key_states
            self.v_buf[:, :, self.length : self.length + n] = value_states
            self.set(self.k_buf, self.v_buf, self.length + n)
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return _BufferLayer


def _gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' sdpa attention, but with grouped-query attention left to torch even under a padding mask:
    transformers repeats the key/value heads instead (on CPU, a copy of the whole cache per layer per step:
    5.4 ms against 0.9 ms a layer for 8 rows of 1,500 tokens, SmolLM2's 9 query heads over 3 key/value heads)."""
    import torch

    causal = query.shape[2] > 1 and attention_mask is None and (is_causal if is_causal is not None else True)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=causal,
                                                           enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def use_gqa_attention(model) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("sdpa_gqa", _gqa_sdpa)
    AttentionMaskInterface.register("sdpa_gqa", sdpa_mask)
    model.set_attn_implementation("sdpa_gqa")


class ContinuousEngine:
    """Generates chat requests for one model and tokenizer; `await engine.generate(request)` from any event loop."""

    def __init__(self, model, tokenizer, *, model_id: str, max_batch: int, max_context: int,
                 repetition_penalty: float = 1.0, prefix_cache_tokens: int = 32768, headroom: int = 512):
        import torch

        use_gqa_attention(model)
        self.model, self.tok, self.model_id = model, tokenizer, model_id
        self.max_batch, self.max_context, self.repetition_penalty = max_batch, max_context, repetition_penalty
        self.headroom = headroom
        self.prefix = PrefixCache(prefix_cache_tokens)
        self.vocab = model.config.vocab_size
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id} - {None}
        self._layer_cls = _buffer_layer_class()
        self._queue: queue.Queue = queue.Queue()
        self._held: _Job | None = None  # a job that did not fit; first in line next time
        self._jobs: list[_Job] = []
        self.rows: list[_Row] = []
        self.layers: list = []  # one _BufferLayer per model layer, shared by all rows
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # [rows, length]: 1 for real tokens, 0 for left padding
        self._llg_tokenizer = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # what the benchmarks read: where the engine's time goes
        self.stats = {"steps": 0, "rows_per_step": 0, "prefill_tokens": 0, "decode_tokens": 0, "admitted": 0,
                      "prefill_s": 0.0, "forward_s": 0.0, "sample_s": 0.0, "layout_s": 0.0}

    # -- the caller's side ----------------------------------------------------------------------------------------

    async def generate(self, request: ChatRequest) -> ChatResponse:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"engine-{self.model_id}", daemon=True)
                self._thread.start()
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        self._queue.put(None)

    # -- the loop ----------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                try:
                    if not self._admit(block=not self.rows):
                        return
                    if self.rows:
                        self._decode_step()
                        self._retire()
                except Exception as e:  # noqa: BLE001 - a failure fails the requests in flight, never the loop:
                    self._fail_rows(LLMError(f"{type(e).__name__}: {e}"))  # callers waiting forever is worse

    def _admit(self, block: bool) -> bool:
        """Take queued jobs while rows are free; False when the engine was closed."""
        joined: list[tuple[_Row, list]] = []
        while len(self.rows) + len(joined) < self.max_batch:
            if self._held is not None:
                job, self._held = self._held, None
            else:
                try:
                    job = self._queue.get(block=block)
                except queue.Empty:
                    break
            if job is None:
                self._fail_rows(LLMError("engine closed"), held_too=True)
                return False
            block = False
            if len(self.rows) + len(joined) + job.request.n > self.max_batch and (self.rows or joined):
                self._held = job  # no room for all its choices now
                break
            try:
                joined += self._prefill(job)
            except Exception as e:  # noqa: BLE001 - a failure fails this request, not the engine
                if job in self._jobs:
                    self._jobs.remove(job)
                self._resolve(job, e if isinstance(e, LLMError) else LLMError(f"{type(e).__name__}: {e}"))
        if joined:
            self._rebuild(self.rows, joined)
        self._retire_finished_jobs()  # choices that ended on their first token
        return True

    def _prefill(self, job: _Job) -> list[tuple[_Row, list]]:
        """Prefill the job's prompt once (reusing a cached prefix), sample each choice's first token; returns the
        rows still generating, with their cache."""
        import torch
        from transformers import DynamicCache

        r = job.request
        text = self.tok.apply_chat_template(r.as_messages(), tokenize=False, add_generation_prompt=not r.prefill,
                                            continue_final_message=r.prefill)
        prompt = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(prompt) + r.max_tokens > self.max_context:
            raise LLMError(f"prompt of {len(prompt)} tokens + {r.max_tokens} new exceeds the {self.max_context}-token "
                           "context")
        t0 = time.perf_counter()
        ids = torch.tensor(prompt)
        reused, start = self.prefix.lookup(ids)
        cache = DynamicCache(ddp_cache_data=reused) if reused else DynamicCache()
        # logits of the last position only: the others' (length x vocabulary) would be computed and dropped
        out = self.model(input_ids=ids[None, start:], position_ids=torch.arange(start, len(prompt))[None],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.prefix.store(ids, kv)
        self.stats["prefill_tokens"] += len(prompt) - start
        self.stats["admitted"] += 1
        self.stats["prefill_s"] += time.perf_counter() - t0
        rows = [_Row(r, c, prompt, self._generator(r, c), self._matcher(r)) for c in range(r.n)]
        job.rows = rows
        self._jobs.append(job)
        logits = out.logits[:, -1, :].float().expand(len(rows), -1).clone()
        self._sample(rows, logits)
        return [(row, kv) for row in rows if row.finish is None]

    def _decode_step(self) -> None:
        import torch

        last = torch.tensor([[row.out[-1]] for row in self.rows])
        positions = self.mask.sum(dim=1, keepdim=True)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        cache = self._cache()
        t0 = time.perf_counter()
        out = self.model(input_ids=last, attention_mask=self.mask, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        t1 = time.perf_counter()
        self._sample(self.rows, out.logits[:, -1, :].float())
        self.stats["forward_s"] += t1 - t0
        self.stats["sample_s"] += time.perf_counter() - t1
        self.stats["steps"] += 1
        self.stats["rows_per_step"] += len(self.rows)

    def _cache(self):
        from transformers import DynamicCache

        cache = DynamicCache()
        cache.layers = self.layers
        return cache

    # -- sampling ----------------------------------------------------------------------------------------------

    def _sample(self, rows: list[_Row], logits) -> None:
        """Pick each row's next token (in place: appends to `row.out`, sets `row.finish` when the row is done)."""
        import torch

        if self.repetition_penalty != 1.0:
            for i, row in enumerate(rows):
                seen = torch.tensor(sorted(set(row.prompt) | set(row.out)))
                scores = logits[i, seen]
                logits[i, seen] = torch.where(scores > 0, scores / self.repetition_penalty,
                                              scores * self.repetition_penalty)
        guided = [i for i, row in enumerate(rows) if row.matcher is not None]
        if guided:
            self._apply_grammar(rows, logits, guided)
        # All rows at once: temperature, softmax, and the top few hundred candidates, within which the top-p
        # nucleus almost always lies (a full sort of the vocabulary per row cost more than the grammar did).
        temps = torch.tensor([max(row.request.temperature, 1e-6) for row in rows]).unsqueeze(1)
        probs = torch.softmax(logits / temps, dim=-1)
        top, order = probs.topk(min(256, probs.shape[1]), dim=-1)
        for i, row in enumerate(rows):
            if row.matcher is not None and not bool(torch.isfinite(logits[i]).any()):
                row.finish, row.text = "error", f"the grammar allows no token: {row.matcher.get_error()[:300]}"
                continue
            token = self._pick(row, probs[i], top[i], order[i])
            row.out.append(token)
            self._check_end(row, token)

    @staticmethod
    def _pick(row: _Row, probs, top, order) -> int:
        import torch

        r = row.request
        if r.temperature <= 0:
            return int(order[0])
        if r.top_p >= 1.0:
            return int(torch.multinomial(probs, 1, generator=row.generator))
        if float(top.sum()) < r.top_p:  # a flat distribution: the nucleus reaches past the candidates
            top, order = probs.sort(descending=True)
        keep = top.cumsum(0) - top < r.top_p  # the smallest set reaching top_p
        return int(order[keep][torch.multinomial(top[keep], 1, generator=row.generator)])

    def _check_end(self, row: _Row, token: int) -> None:
        r = row.request
        if row.matcher is not None:
            if token in self.eos:  # the grammar allowed the end here: it is complete
                row.out.pop()
                row.finish = "stop"
            elif not row.matcher.consume_token(token):
                row.finish = "error"
                row.text = f"grammar rejected token {token}: {row.matcher.get_error()[:300]}"
            elif row.matcher.is_stopped():  # complete, and nothing may follow
                row.finish = "stop"
        elif token in self.eos:
            row.out.pop()
            row.finish = "stop"
        elif r.stop:
            tail = self.tok.decode(row.out[-24:], skip_special_tokens=True)
            if any(s in tail for s in r.stop):
                text = self.tok.decode(row.out, skip_special_tokens=True)
                pos, stop = min((text.find(s), s) for s in r.stop if s in text)
                row.text, row.stop_sequence, row.finish = text[:pos], stop, "stop"
        if row.finish is None and len(row.out) >= r.max_tokens:
            row.finish = "length"

    def _apply_grammar(self, rows: list[_Row], logits, guided: list[int]) -> None:
        import llguidance.torch as llgt
        import torch

        bitmask = llgt.allocate_token_bitmask(len(rows), self.vocab)
        for i in guided:
            llgt.fill_next_token_bitmask(rows[i].matcher, bitmask, i)
        bits = (bitmask[guided].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.reshape(len(guided), -1)[:, : logits.shape[1]].bool()
        # A plain masked fill: llguidance's own helper compiles a kernel with torch.compile, not worth it on CPU.
        logits[guided] = logits[guided].masked_fill(~allowed, float("-inf"))

    def _generator(self, r: ChatRequest, choice: int):
        import torch

        g = torch.Generator()
        if r.seed is None:
            g.seed()
        else:
            g.manual_seed((r.seed * 1_000_003 + choice) & 0xFFFF_FFFF_FFFF)
        return g

    def _matcher(self, r: ChatRequest):
        if r.grammar is None:
            return None
        import llguidance

        if self._llg_tokenizer is None:
            import llguidance.hf

            self._llg_tokenizer = llguidance.hf.from_tokenizer(self.tok, n_vocab=self.vocab,
                                                               eos_token=sorted(self.eos))
        try:
            grammar = llguidance.grammar_from("gbnf", r.grammar)
        except ValueError as e:
            raise LLMError(f"invalid grammar: {e}") from None
        matcher = llguidance.LLMatcher(self._llg_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise LLMError(f"invalid grammar: {matcher.get_error()[:500]}")
        return matcher

    # -- the batch's cache ---------------------------------------------------------------------------------------

    def _rebuild(self, keep: list[_Row], joined: list[tuple[_Row, list]]) -> None:
        """Lay the kept rows and the joining ones out in new buffers, right-aligned to one length (left padding)."""
        import torch

        t0 = time.perf_counter()
        old_len = self.mask.shape[1]
        lengths = [int(n) for n in self.mask.sum(dim=1)] if self.rows else []
        index = {id(row): i for i, row in enumerate(self.rows)}
        sources = [(row, lengths[index[id(row)]], None) for row in keep] + \
                  [(row, kv[0][0].shape[-2], kv) for row, kv in joined]
        length = max(n for _, n, _ in sources)
        capacity = length + self.headroom
        template = joined[0][1] if joined else [(layer.k_buf, layer.v_buf) for layer in self.layers]
        new_layers, mask = [], torch.zeros((len(sources), length), dtype=torch.long)
        for li, (k0, _v0) in enumerate(template):
            heads, dim = k0.shape[1], k0.shape[-1]
            k_buf = torch.zeros((len(sources), heads, capacity, dim), dtype=k0.dtype)
            v_buf = torch.zeros_like(k_buf)
            for b, (row, n, kv) in enumerate(sources):
                if kv is None:
                    layer = self.layers[li]
                    k_src = layer.k_buf[index[id(row)], :, old_len - n : old_len]
                    v_src = layer.v_buf[index[id(row)], :, old_len - n : old_len]
                else:
                    k_src, v_src = kv[li][0][0], kv[li][1][0]
                k_buf[b, :, length - n : length] = k_src
                v_buf[b, :, length - n : length] = v_src
            layer = self._layer_cls()
            layer.set(k_buf, v_buf, length)
            new_layers.append(layer)
        for b, (_row, n, _kv) in enumerate(sources):
            mask[b, length - n :] = 1
        self.layers, self.mask, self.rows = new_layers, mask, [row for row, _, _ in sources]
        self.stats["layout_s"] += time.perf_counter() - t0

    def _retire(self) -> None:
        """Drop finished rows from the batch (keeping their caches for reuse) and answer finished jobs."""
        done = [i for i, row in enumerate(self.rows) if row.finish is not None]
        if not done:
            return
        import torch

        length = self.mask.shape[1]
        for i in done:
            row = self.rows[i]
            if row.finish in ("stop", "length"):
                n = int(self.mask[i].sum())  # the cache holds a prefix of prompt + output (the last token unfed)
                kv = [(layer.k_buf[i : i + 1, :, length - n : length], layer.v_buf[i : i + 1, :, length - n : length])
                      for layer in self.layers]
                self.prefix.store(torch.tensor((row.prompt + row.out)[:n]), kv)
        keep = [row for row in self.rows if row.finish is None]
        if keep:
            self._rebuild(keep, [])
        else:
            self._empty()
        self._retire_finished_jobs()

    def _empty(self) -> None:
        import torch

        self.rows, self.layers = [], []
        self.mask = torch.zeros((0, 0), dtype=torch.long)

    def _retire_finished_jobs(self) -> None:
        for job in [j for j in self._jobs if j.rows and all(row.finish is not None for row in j.rows)]:
            self._jobs.remove(job)
            errors = [row.text for row in job.rows if row.finish == "error"]
            self._resolve(job, LLMError(errors[0]) if errors else self._response(job))

    def _response(self, job: _Job) -> ChatResponse:
        choices = []
        for row in job.rows:
            text = row.text if row.stop_sequence else self.tok.decode(row.out, skip_special_tokens=True)
            choices.append(Choice(text, "length" if row.finish == "length" else "stop", row.stop_sequence))
        completion = sum(len(row.out) for row in job.rows)
        self.stats["decode_tokens"] += completion
        return ChatResponse(choices, len(job.rows[0].prompt), completion, self.model_id,
                            guided=job.request.grammar is not None)

    def _fail_rows(self, error: LLMError, held_too: bool = False) -> None:
        for job in list(self._jobs):
            self._jobs.remove(job)
            self._resolve(job, error)
        if held_too and self._held is not None:
            self._resolve(self._held, error)
            self._held = None
        self._empty()

    @staticmethod
    def _resolve(job: _Job, result) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # that caller's event loop is gone
            pass

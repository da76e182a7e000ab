"""vLLM's offline engine, for GPU machines. Imported lazily: CPU environments never import vllm.

Concurrent requests are grouped by the same batcher as the local backend and handed to `LLM.chat` together,
where vLLM's continuous batching takes over. Install with `pip install -e ".[gpu]"` on a CUDA machine
(vLLM pins its own CUDA torch, so it never shares the CPU environment); or run `vllm serve MODEL` and use the
`openai` backend against it.
"""

from __future__ import annotations

from pathlib import Path

from models.backends.batching import BatchingBackend
from models.llm import ChatRequest, ChatResponse, Choice, LLMError
from models.resolve import model_identity


class VLLMBackend(BatchingBackend):
    supports_grammar = True  # structured outputs: GBNF through xgrammar or guidance
    endpoint = None

    def __init__(self, cfg, cache_dir: Path | None = None, **engine_kwargs):
        super().__init__(max_batch=max(cfg.max_batch, 256), batch_window_ms=cfg.batch_window_ms)
        self.cfg, self.cache_dir, self.engine_kwargs = cfg, cache_dir, engine_kwargs
        self.model_id = model_identity(cfg, cache_dir)
        self._llm = None

    def _engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise LLMError("the vllm backend needs vLLM on a GPU machine: pip install -e '.[gpu]'") from e
            from models.resolve import resolve_model

            self._llm = LLM(model=resolve_model(self.cfg.name, self.cache_dir), dtype=self.cfg.dtype,
                            max_model_len=self.cfg.max_context_tokens, **self.engine_kwargs)
        return self._llm

    def generate_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        llm = self._engine()  # first: it explains a missing vLLM
        from vllm import SamplingParams

        params = [SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                 stop=list(r.stop) or None, seed=r.seed, repetition_penalty=self.cfg.repetition_penalty,
                                 structured_outputs=_structured(r.grammar)) for r in requests]
        prefill = requests[0].prefill  # the batcher groups by prefill, so one flag fits the group
        outputs = llm.chat([r.as_messages() for r in requests], params, use_tqdm=False,
                           add_generation_prompt=not prefill, continue_final_message=prefill)
        results = []
        for request, out in zip(requests, outputs, strict=True):
            choices = [Choice(o.text, "length" if o.finish_reason == "length" else "stop",
                              o.stop_reason if isinstance(o.stop_reason, str) else None) for o in out.outputs]
            results.append(ChatResponse(choices, len(out.prompt_token_ids),
                                        sum(len(o.token_ids) for o in out.outputs), self.model_id,
                                        guided=request.grammar is not None))
        return results


def _structured(grammar: str | None):
    """vLLM's structured outputs for a GBNF grammar (its `guided_*` fields were removed in 0.12)."""
    if grammar is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(grammar=grammar)

"""transformers in-process (the embedded default): continuous batching with grammar-constrained decoding.

The model loads on first use; requests go to one `ContinuousEngine` (continuous.py), which decodes every active
request together, admits new ones between decode steps, reuses cached prompt prefixes, and holds each request
to its grammar (llguidance) when it carries one. The text comes back without its stop sequence (as
OpenAI-compatible servers return it), with `stop_sequence` saying which matched.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from models.llm import ChatRequest, ChatResponse
from models.resolve import model_identity


class LocalBackend:
    supports_grammar = True
    endpoint = None

    def __init__(self, cfg, cache_dir: Path | None = None):
        self.cfg, self.cache_dir = cfg, cache_dir
        self.model_id = model_identity(cfg, cache_dir)
        self._engine = None
        self._load_lock = threading.Lock()

    def _load(self):
        with self._load_lock:
            if self._engine is None:
                import torch

                from models.backends.continuous import ContinuousEngine
                from models.resolve import load_model_and_tokenizer

                torch.set_num_threads(max(1, torch.get_num_threads()))
                model, tok = load_model_and_tokenizer(self.cfg.name, self.cache_dir, self.cfg.dtype)
                model.eval()
                self._engine = ContinuousEngine(model, tok, model_id=self.model_id, max_batch=self.cfg.max_batch,
                                                max_context=self.cfg.max_context_tokens,
                                                repetition_penalty=self.cfg.repetition_penalty,
                                                prefix_cache_tokens=self.cfg.prefix_cache_tokens)
        return self._engine

    @property
    def engine(self):
        return self._engine or self._load()

    async def generate(self, request: ChatRequest) -> ChatResponse:
        # the first call loads the model (seconds) off the event loop, so other agents' coroutines keep going
        engine = self._engine or await asyncio.to_thread(self._load)
        return await engine.generate(request)

    async def aclose(self) -> None:
        if self._engine is not None:
            self._engine.close()

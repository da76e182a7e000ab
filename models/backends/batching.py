"""Request grouping for engines that batch on their own (vLLM's offline engine, whose continuous batching takes
over once a group is handed to it). The in-process transformers engine has its own scheduler (continuous.py).

Callers `await generate(request)`; a worker thread takes the first queued request, waits up to
`batch_window_ms` for more (up to `max_batch`), groups those that can share one engine call (same sampling
parameters and stop sequences), runs each group, and resolves the callers' futures on their event loops.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict

from models.llm import ChatRequest, ChatResponse, LLMError


class BatchingBackend:
    model_id: str

    def __init__(self, max_batch: int, batch_window_ms: float):
        self.max_batch, self.window_s = max_batch, batch_window_ms / 1000
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # observed, for benchmarks and tests

    def generate_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Generate a group of compatible requests in one engine call (implemented by each engine)."""
        raise NotImplementedError

    async def generate(self, request: ChatRequest) -> ChatResponse:
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((request, loop, future))
        return await future

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name=f"batcher-{self.model_id}", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            groups: dict[tuple, list] = defaultdict(list)
            for entry in batch:
                r = entry[0]
                groups[(r.temperature, r.top_p, r.stop, r.prefill)].append(entry)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list) -> None:
        self.batch_sizes.append(len(group))
        try:
            results: list = self.generate_batch([req for req, _, _ in group])
        except LLMError as e:
            results = [e] * len(group)
        except Exception as e:  # noqa: BLE001 - an engine crash fails these requests, not the worker
            results = [LLMError(f"{type(e).__name__}: {e}")] * len(group)
        for (_, loop, future), result in zip(group, results, strict=True):
            try:
                loop.call_soon_threadsafe(_resolve, future, result)
            except RuntimeError:  # that caller's event loop is gone; the others still get their results
                continue

    async def aclose(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)


def _resolve(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)

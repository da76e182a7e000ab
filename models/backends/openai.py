"""Any OpenAI-compatible chat endpoint over async httpx: vLLM's server, llama.cpp's server, OpenAI itself.

Retries with exponential backoff and jitter on 429, 5xx, timeouts, malformed JSON and empty completions,
honouring Retry-After; a concurrency limit and a requests-per-minute limit; the API key is read from the
environment variable the config names, sent only in the Authorization header, never logged.
A final assistant message is continued (vLLM: `continue_final_message`; llama.cpp treats it as a prefill).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time

import httpx

from models.llm import ChatRequest, ChatResponse, Choice, LLMError
from models.resolve import model_identity

POOL_SIZE = 16  # connections per httpx client (see _setup)


class RateLimiter:
    """At most `per_minute` request starts in any 60 s, spread evenly."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            wait = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)


class OpenAIBackend:
    def __init__(self, cfg, *, key: str = "model", backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0):
        self.cfg, self.key = cfg, key
        # How this endpoint takes a grammar (config `grammar_api`): vLLM's server reads `structured_outputs` in
        # the request body (xgrammar and guidance backends both read GBNF); llama.cpp's server reads `grammar`.
        self.supports_grammar = cfg.grammar_api != "none"
        self.model_id = model_identity(cfg)
        self.endpoint = cfg.base_url  # recorded with each trace; not part of the cache identity
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self._clients: list[httpx.AsyncClient] = []
        self._next = 0
        self._sem: asyncio.Semaphore | None = None
        self._rate: RateLimiter | None = None

    def _setup(self) -> None:
        # Created on first use, inside the event loop that will use them. httpcore's pool scans every
        # connection for every queued request, which goes quadratic past a few dozen connections, so high
        # concurrency is spread over several clients of at most POOL_SIZE connections each.
        if not self._clients:
            shards = -(-self.cfg.max_concurrency // POOL_SIZE)
            per_shard = -(-self.cfg.max_concurrency // shards)
            limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
            self._clients = [httpx.AsyncClient(base_url=self.cfg.base_url.rstrip("/") + "/", limits=limits,
                                               timeout=httpx.Timeout(self.cfg.timeout_s), trust_env=False)
                             for _ in range(shards)]
            self._sem = asyncio.Semaphore(self.cfg.max_concurrency)
            self._rate = RateLimiter(self.cfg.requests_per_minute)

    @contextlib.asynccontextmanager
    async def _shared_slot(self):
        """A slot of the Prefect global concurrency limit `prefect_concurrency_limit`, if set: the cap on requests
        in flight across every run and machine using the same paid key (this process's own cap is
        `max_concurrency`). A limit that does not exist is an error, not a silent no-limit."""
        if not self.cfg.prefect_concurrency_limit:
            yield
            return
        from prefect.concurrency.asyncio import concurrency

        async with concurrency(self.cfg.prefect_concurrency_limit, occupy=1, strict=True):
            yield

    def _client(self) -> httpx.AsyncClient:
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    def _headers(self) -> dict[str, str]:
        if not self.cfg.api_key_env:
            return {}
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            raise LLMError(f"no API key: ${self.cfg.api_key_env} is not set")
        return {"Authorization": f"Bearer {key}"}

    def _body(self, req: ChatRequest) -> dict:
        body = {"model": self.cfg.api_model, "messages": req.as_messages(), "max_tokens": req.max_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "n": req.n}
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.prefill:
            body.update(continue_final_message=True, add_generation_prompt=False)
        if self.cfg.repetition_penalty != 1.0:
            body["repetition_penalty"] = self.cfg.repetition_penalty  # vLLM and llama.cpp servers accept it
        if req.grammar is not None:
            if self.cfg.grammar_api == "vllm":
                body["structured_outputs"] = {"grammar": req.grammar}
            elif self.cfg.grammar_api == "llama.cpp":
                body["grammar"] = req.grammar
        return body

    async def generate(self, req: ChatRequest) -> ChatResponse:
        self._setup()
        headers, body = self._headers(), self._body(req)
        reason = "no attempt made"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = 0.0
            async with self._sem, self._shared_slot():
                await self._rate.acquire()
                try:
                    resp = await self._client().post("chat/completions", json=body, headers=headers)
                except httpx.TimeoutException:
                    reason = f"timeout after {self.cfg.timeout_s} s"
                except httpx.TransportError as e:
                    reason = f"connection error: {type(e).__name__}"
                else:
                    if resp.status_code == 429 or resp.status_code >= 500:
                        reason = f"HTTP {resp.status_code}"
                        retry_after = _retry_after(resp.headers.get("retry-after"))
                    elif resp.status_code >= 400:
                        # The endpoint's configuration, not this request, is wrong: the call fails now, without
                        # retries, and as `transient`, so that a re-run with the setting fixed retries the seed
                        # instead of finding it settled as a failure.
                        if req.grammar is not None and resp.status_code in (400, 422):
                            raise LLMError(
                                f"{self.cfg.base_url} refused the request with its grammar (HTTP {resp.status_code}: "
                                f"{resp.text[:200]}): set {self.key}.grammar_api to the field this server takes "
                                f"('vllm' or 'llama.cpp'), or to 'none' to run it unguided", transient=True)
                        if resp.status_code in (401, 403, 404):
                            raise LLMError(
                                f"{self.cfg.base_url} answered HTTP {resp.status_code} ({resp.text[:200]}): check "
                                f"{self.key}.api_key_env, {self.key}.served_name and {self.key}.base_url",
                                transient=True)
                        raise LLMError(f"HTTP {resp.status_code}: {resp.text[:300]}")
                    else:
                        parsed = _parse(resp, req)
                        if isinstance(parsed, ChatResponse):
                            return parsed
                        reason = parsed
            if attempt < self.cfg.max_retries:
                backoff = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.5)
                await asyncio.sleep(max(backoff, retry_after))
        raise LLMError(f"{reason} (after {self.cfg.max_retries + 1} attempts)", transient=True)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients = []


def _retry_after(value: str | None) -> float:
    try:
        return min(120.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP-date: fall back to our own backoff


def _parse(resp: httpx.Response, req: ChatRequest) -> ChatResponse | str:
    """The response, or the reason it is unusable (then retried)."""
    try:
        data = resp.json()
        raw_choices = data["choices"]
        choices = []
        for c in raw_choices:
            text = (c.get("message") or {}).get("content") or c.get("text") or ""
            stop_reason = c.get("stop_reason")  # vLLM: the stop string that matched
            finish = "length" if c.get("finish_reason") == "length" else "stop"
            choices.append(Choice(text, finish, stop_reason if isinstance(stop_reason, str) else None))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "malformed JSON response"
    if not choices:
        return "response has no choices"
    if all(not c.text.strip() and c.finish_reason == "stop" and c.stop_sequence is None for c in choices):
        return "empty completion"
    usage = data.get("usage") or {}
    prompt = usage.get("prompt_tokens") or sum(len(c) for _, c in req.messages) // 4
    completion = usage.get("completion_tokens") or sum(len(c.text) for c in choices) // 4
    return ChatResponse(choices, int(prompt), int(completion), str(data.get("model") or "unknown"),
                        guided=req.grammar is not None)

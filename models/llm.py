"""The one LLM client interface: chat messages in; text, stop reason and token usage out.

Every model call in the project goes through `LLMClient.chat`, whatever the backend:
- `openai`: any OpenAI-compatible endpoint (vLLM's server, llama.cpp's server, OpenAI) over async httpx;
- `local`: transformers in-process, with dynamic batching of requests that arrive together;
- `vllm`: vLLM's offline engine on GPU machines (imported lazily; never on CPU).

Around the backend, the client adds what a paid run needs:
- a **response cache** keyed by the request (model, messages, sampling parameters, seed): a re-run never pays
  twice for the same call. Candidate k of a seed passes its own `seed`, so it gets its own sample. The model
  part is `models.resolve.model_identity`: backend and served name, not the endpoint URL, because what answers a
  request is the model, not its address: a teacher restarted on another port or reached through another
  proxy is the same teacher, and re-paying it would be waste. Two endpoints that serve *different* models
  under one name must be told apart with `identity` in their config;
- a **cost ledger**: tokens in/out and USD per call (prices from config), cached calls at zero cost;
- a **budget** (`max_cost_usd`, `max_tokens`): once spent, the next uncached call raises `BudgetExceeded`.

    client = make_client(cfg.synthesis.teacher, store=LLMStore(cfg.paths.data / "llm.sqlite"))
    resp = await client.chat([{"role": "user", "content": "Hi"}], max_tokens=32, stop=["</web_search>"])
    resp.text, resp.choices[0].finish_reason, resp.prompt_tokens, resp.completion_tokens
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from oresearcher.grammar import Guide
from oresearcher.sqlite import ThreadLocalDB
from oresearcher.tracing import span

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class LLMError(RuntimeError):
    """A call that failed after retries (or cannot succeed); `reason` is short and recordable."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason, self.transient = reason, transient


class BudgetExceeded(RuntimeError):
    """The run's cost or token budget is spent; nothing more is called."""


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content); a final assistant message is continued (prefill)
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    grammar: str | None = None  # GBNF the output must match (`oresearcher.grammar` builds them); part of the key

    @property
    def prefill(self) -> bool:
        return bool(self.messages) and self.messages[-1][0] == "assistant"

    def as_messages(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self, model_id: str) -> str:
        return hashlib.sha256(json.dumps([model_id, asdict(self)], sort_keys=True).encode()).hexdigest()


@dataclass
class Choice:
    text: str
    finish_reason: Literal["stop", "length"]
    stop_sequence: str | None = None  # which stop sequence ended it, when the backend says


@dataclass
class ChatResponse:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    model: str
    cached: bool = False
    cost_usd: float = 0.0
    latency_s: float = 0.0
    guided: bool = False  # the backend held the output to the request's grammar

    @property
    def text(self) -> str:
        return self.choices[0].text

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ChatResponse:
        data = json.loads(raw)
        data["choices"] = [Choice(**c) for c in data["choices"]]
        return cls(**data)


class Backend(Protocol):
    model_id: str
    supports_grammar: bool  # can hold an output to the request's grammar
    endpoint: str | None  # where the model is served, recorded with traces (not part of the cache identity)

    async def generate(self, request: ChatRequest) -> ChatResponse: ...

    async def aclose(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT NULL,
                                      created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, run TEXT, model TEXT,
                                   tag TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL,
                                   cached INTEGER, latency_s REAL);
"""


class LLMStore:
    """Response cache and cost ledger in one SQLite file (under data/, so paid work is versioned with it)."""

    def __init__(self, path: Path):
        self.db = ThreadLocalDB(path, _SCHEMA)

    def get(self, key: str) -> ChatResponse | None:
        row = self.db.conn().execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return ChatResponse.from_json(row[0]) if row else None

    def record(self, key: str | None, resp: ChatResponse, run: str, tag: str) -> None:
        statements = [("INSERT INTO ledger (ts, run, model, tag, prompt_tokens, completion_tokens, cost_usd, cached,"
                       " latency_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (time.time(), run, resp.model, tag, resp.prompt_tokens, resp.completion_tokens,
                        resp.cost_usd, int(resp.cached), resp.latency_s))]
        if key is not None:
            statements.append(("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                               (key, resp.model, resp.to_json(), time.time())))
        self.db.write(statements)

    def totals(self, run: str | None = None) -> dict[str, float]:
        where, args = ("WHERE run = ?", (run,)) if run else ("", ())
        row = self.db.conn().execute(
            "SELECT COUNT(*), COALESCE(SUM(cached), 0), COALESCE(SUM(prompt_tokens), 0), "
            f"COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost_usd), 0) FROM ledger {where}", args).fetchone()
        return dict(zip(("calls", "cached", "prompt_tokens", "completion_tokens", "cost_usd"), row, strict=True))


@dataclass
class Budget:
    """Spending caps for one run. Each call reserves its worst case before it starts and settles after, so
    concurrent calls cannot all slip under the cap at once: a run overshoots by at most one call."""

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, cost: float, tokens: int) -> None:
        with self._lock:
            if self.max_cost_usd is not None and self.spent_usd + self.reserved_usd >= self.max_cost_usd:
                raise BudgetExceeded(f"cost budget spent: ${self.spent_usd:.4f} of ${self.max_cost_usd:.4f}")
            if self.max_tokens is not None and self.spent_tokens + self.reserved_tokens >= self.max_tokens:
                raise BudgetExceeded(f"token budget spent: {self.spent_tokens} of {self.max_tokens}")
            self.reserved_usd += cost
            self.reserved_tokens += tokens

    def settle(self, reserved_cost: float, reserved_tokens: int, cost: float, tokens: int) -> None:
        with self._lock:
            self.reserved_usd -= reserved_cost
            self.reserved_tokens -= reserved_tokens
            self.spent_usd += cost
            self.spent_tokens += tokens


@dataclass
class Usage:
    calls: int = 0
    cache_hits: int = 0
    guided_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, resp: ChatResponse) -> None:
        self.calls += 1
        self.cache_hits += resp.cached
        self.guided_calls += resp.guided
        self.prompt_tokens += resp.prompt_tokens
        self.completion_tokens += resp.completion_tokens
        self.cost_usd += resp.cost_usd


class LLMClient:
    def __init__(self, backend: Backend, *, store: LLMStore | None = None, budget: Budget | None = None,
                 price_in_per_mtok: float = 0.0, price_out_per_mtok: float = 0.0, run: str = "",
                 defaults: dict | None = None, guided: bool = False):
        self.backend, self.store, self.budget, self.run = backend, store, budget, run
        # Guided: calls that pass a `guide` are held to its grammar. Off, or on a backend that cannot hold an
        # output to a grammar, they run unguided and the validator decides.
        self.guided = guided and backend.supports_grammar
        self.price_in, self.price_out = price_in_per_mtok, price_out_per_mtok
        self.defaults = {"max_tokens": 512, "temperature": 0.7, "top_p": 0.95, **(defaults or {})}

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    async def chat(self, messages: list[Message], *, max_tokens: int | None = None, temperature: float | None = None,
                   top_p: float | None = None, stop: list[str] | tuple[str, ...] = (), n: int = 1,
                   seed: int | None = None, tag: str = "", usage: Usage | None = None,
                   guide: Guide | None = None) -> ChatResponse:
        """One chat completion: from the cache if this exact request was answered before, else from the backend.

        With a `guide` on a guided client, the output is held to its grammar and the call gets the token budget
        the grammar fits in; stop sequences are then unnecessary (a complete output admits only its end)."""
        max_tokens = max_tokens if max_tokens is not None else self.defaults["max_tokens"]
        grammar = None
        if guide is not None and self.guided:
            grammar, max_tokens, stop = guide.gbnf, max(max_tokens, guide.max_tokens), ()
        req = ChatRequest(tuple((m["role"], m["content"]) for m in messages), max_tokens,
                          temperature if temperature is not None else self.defaults["temperature"],
                          top_p if top_p is not None else self.defaults["top_p"], tuple(stop), n, seed, grammar)
        key = req.key(self.model_id)
        with span(f"llm:{tag or 'chat'}", "LLM", {"model": self.model_id, "messages": req.as_messages()}) as sp:
            resp = self.store.get(key) if self.store else None
            if resp is not None:
                resp.cached, resp.cost_usd = True, 0.0
                if self.store:
                    self.store.record(None, resp, self.run, tag)
            else:
                est_in, est_out = sum(len(c) for _, c in req.messages) // 3, req.max_tokens * req.n
                est_cost = self._cost(est_in, est_out)
                if self.budget:
                    self.budget.reserve(est_cost, est_in + est_out)
                start = time.perf_counter()
                try:
                    resp = await self.backend.generate(req)  # `resp` stays None if this raises
                finally:
                    if self.budget:
                        self.budget.settle(est_cost, est_in + est_out,
                                           self._cost(resp.prompt_tokens, resp.completion_tokens) if resp else 0.0,
                                           resp.prompt_tokens + resp.completion_tokens if resp else 0)
                resp.latency_s = time.perf_counter() - start
                resp.cost_usd = self._cost(resp.prompt_tokens, resp.completion_tokens)
                if self.store:
                    self.store.record(key, resp, self.run, tag)
            sp.set_outputs({"text": resp.text, "finish_reason": resp.choices[0].finish_reason,
                            "prompt_tokens": resp.prompt_tokens, "completion_tokens": resp.completion_tokens,
                            "cached": resp.cached, "guided": resp.guided})
        if usage is not None:
            usage.add(resp)
        return resp

    async def aclose(self) -> None:
        await self.backend.aclose()


def make_backend(cfg, cache_dir: Path | None = None, key: str = "model") -> Backend:
    """The backend a `ModelConfig` names. Heavy imports happen only for the one chosen."""
    if cfg.backend == "openai":
        from models.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg, key=key)
    if cfg.backend == "local":
        from models.backends.local import LocalBackend

        return LocalBackend(cfg, cache_dir)
    from models.backends.vllm import VLLMBackend

    return VLLMBackend(cfg, cache_dir)


def make_client(cfg, *, store: LLMStore | None = None, budget: Budget | None = None, run: str = "",
                cache_dir: Path | None = None, backend: Backend | None = None, key: str = "model") -> LLMClient:
    """The client for a `ModelConfig`; `key` is where that config sits (e.g. "synthesis.teacher"), so that an error
    about it can name the setting to change."""
    return LLMClient(backend or make_backend(cfg, cache_dir, key), store=store, budget=budget,
                     price_in_per_mtok=cfg.price_in_per_mtok, price_out_per_mtok=cfg.price_out_per_mtok, run=run,
                     defaults={"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p},
                     guided=cfg.guided)

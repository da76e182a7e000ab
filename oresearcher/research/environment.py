"""The research environment: the agent's two tools, `web_search` and `crawl_page`, over one backend interface.

Synthesis (teacher models), GRPO rollouts (the policy in training) and evaluation (the policy under test) all
call the tools through `ResearchEnvironment`, so they see the same rendering and share the same tape:

    env = ResearchEnvironment.from_config(load_config("configs/tiny.yaml"))
    print(env.web_search("causes of the Black Death"))           # numbered markdown list, as the agent sees it
    print(env.crawl_page("https://en.wikipedia.org/wiki/Black_Death"))
    env.execute(grammar.parse_tool_call("web_search", "query=a | b&num=5"))   # from a parsed trace

`env.tools` are plain typed functions with docstrings, usable as TRL tools.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from oresearcher import grammar
from oresearcher.config import Settings
from oresearcher.research.corpus import normalize_url
from oresearcher.research.local_index import Feedback, LocalIndex, SearchHit
from oresearcher.research.tape import Tape, TapeMiss
from oresearcher.research.web import Page, ToolError, TransientToolError


class SearchBackend(Protocol):
    def search(self, query: str, k: int) -> list[SearchHit]: ...


class PageBackend(Protocol):
    def fetch(self, url: str) -> Page: ...


class LocalPages:
    """crawl_page over the local corpus: a corpus URL returns that document."""

    def __init__(self, index: LocalIndex):
        self.index = index

    def fetch(self, url: str) -> Page:
        doc = self.index.get(url)
        if doc is None:
            raise ToolError(f"page not found in the local corpus: {url}")
        text = f"{doc.description}\n\n{doc.text}" if doc.description else doc.text
        return Page(doc.url, doc.title, text, doc.date)


_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def truncate_to_tokens(text: str, budget: int) -> str:
    """Cut `text` to about `budget` tokens (words and punctuation marks: a slight over-count of BPE tokens)."""
    for i, m in enumerate(_TOKEN_RE.finditer(text)):
        if i == budget:
            return text[: m.start()].rstrip() + "\n[... page truncated]"
    return text


def render_search(hits: list[SearchHit], queries: list[str]) -> str:
    if not hits:
        return "No results found for: " + " | ".join(queries)
    lines = []
    for n, h in enumerate(hits, 1):
        lines.append(f"{n}. [{h.title or h.url}]({h.url})")
        if h.date:
            lines.append(f"   Date: {h.date}")
        if h.snippet:
            lines.append("   " + " ".join(h.snippet.split()))
    return "\n".join(lines)


def render_page(page: Page, budget: int) -> str:
    head = f"## [{page.title or page.url}]({page.url})" + (f"\nDate: {page.date}" if page.date else "")
    return f"{head}\n\n{truncate_to_tokens(page.text, budget)}"


def merge_hits(per_query: list[list[SearchHit]], num: int) -> list[SearchHit]:
    """Round-robin across the queries' rankings, de-duplicated by URL, first `num`."""
    merged, seen = [], set()
    for rank in range(max((len(h) for h in per_query), default=0)):
        for hits in per_query:
            if rank < len(hits) and (key := normalize_url(hits[rank].url)) not in seen:
                seen.add(key)
                merged.append(hits[rank])
    return merged[:num]


class ResearchEnvironment:
    def __init__(self, searcher: SearchBackend | None, pages: PageBackend | None, tape: Tape | None,
                 mode: str, *, search_id: str, pages_id: str, default_num: int = 10, page_token_budget: int = 2000):
        self.searcher, self.pages, self.tape, self.mode = searcher, pages, tape, mode
        self.search_id, self.pages_id = search_id, pages_id
        self.default_num, self.page_token_budget = default_num, page_token_budget
        self.counts: Counter[str] = Counter()  # tool calls, tape hits, live calls, errors
        self._counts_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Settings) -> ResearchEnvironment:
        r = cfg.research
        mode = r.tape.mode
        tape = Tape(cfg.tape_path) if mode != "live" else None
        index = None
        if "local" in (r.search.backend, r.crawl.backend):
            index = LocalIndex(r.search.corpora, cfg.paths.cache, r.snippet_chars, Feedback.of(r.search))
        search_id = index.backend_id if r.search.backend == "local" else _live_search_id(cfg)
        pages_id = index.backend_id if r.crawl.backend == "local" else "web"
        searcher = pages = None
        if mode != "replay":  # replay never builds a live backend: it cannot touch the network
            searcher = index if r.search.backend == "local" else _live_searcher(cfg)
            pages = LocalPages(index) if r.crawl.backend == "local" else _web_crawler(cfg)
        return cls(searcher, pages, tape, mode, search_id=search_id, pages_id=pages_id,
                   default_num=r.default_num_results, page_token_budget=r.page_token_budget)

    # -- the tools, as the agent sees them ----------------------------------------------------------------------

    def web_search(self, query: str, num: int = 10) -> str:
        """Search the web.

        Args:
            query: one or more search queries, separated by " | ".
            num: total number of results to return across the queries (1 to 20).

        Returns:
            A numbered markdown list of results: title as a link, date if known, snippet.
        """
        queries = [q.strip() for q in query.split("|") if q.strip()]
        if not queries:
            return "Error: web_search needs a query"
        num = max(1, min(int(num or self.default_num), grammar.MAX_NUM_RESULTS))
        per_query = [self._search_one(q, num) for q in queries]
        errors = [r for r in per_query if isinstance(r, str)]
        hits = merge_hits([r for r in per_query if not isinstance(r, str)], num)
        if errors and not hits:
            return "\n".join(errors)
        return render_search(hits, queries)

    def crawl_page(self, url: str) -> str:
        """Fetch web pages and return their main text.

        Args:
            url: one or more page URLs, separated by " | ".

        Returns:
            Each page's title, URL and main text, cut to a token budget.
        """
        urls = [u.strip() for u in url.split("|") if u.strip()]
        if not urls:
            return "Error: crawl_page needs a URL"
        budget = max(64, self.page_token_budget // len(urls))
        parts = []
        for u in urls:
            result = self._call("crawl", self.pages_id, {"url": u}, lambda u=u: asdict(self.pages.fetch(u)))
            parts.append(result if isinstance(result, str) else render_page(Page(**result), budget))
        return "\n\n".join(parts)

    @property
    def tools(self) -> list[Callable[..., str]]:
        return [self.web_search, self.crawl_page]

    def execute(self, call: grammar.ToolCall) -> str:
        """The observation for a tool call parsed from a trace."""
        if call.error:
            return f"Error: {call.error}"
        if call.name == grammar.WEB_SEARCH:
            return self.web_search(" | ".join(call.args), call.num or self.default_num)
        return self.crawl_page(" | ".join(call.args))

    # -- mechanics ----------------------------------------------------------------------------------------------

    def _search_one(self, query: str, k: int) -> list[SearchHit] | str:
        result = self._call("search", self.search_id, {"query": query, "k": k},
                            lambda: {"hits": [asdict(h) for h in self.searcher.search(query, k)]})
        return result if isinstance(result, str) else [SearchHit(**h) for h in result["hits"]]

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1

    def _call(self, tool: str, backend: str, args: dict, live: Callable[[], dict]) -> dict | str:
        """Tape lookup, then the live backend; errors come back as the observation text 'Error: ...'."""
        self._count(f"{tool}.calls")
        recorded = self.tape.get(backend, tool, args) if self.tape else None
        if recorded is not None and (self.mode == "replay" or not recorded.get("transient")):
            self._count(f"{tool}.tape_hits")
            result = recorded
        elif self.mode == "replay":
            raise TapeMiss(f"replay: {tool} {args} on {backend} is not on the tape {self.tape.path}")
        else:
            self._count(f"{tool}.live")
            try:
                result = live()
            except ToolError as e:
                result = {"error": str(e), "transient": isinstance(e, TransientToolError)}
            if self.tape:
                self.tape.put(backend, tool, args, result)
        if "error" in result:
            self._count(f"{tool}.errors")
            return f"Error: {result['error']}"
        return result


def _live_search_id(cfg: Settings) -> str:
    s = cfg.research.search
    return f"searxng:{s.searxng_url}" if s.backend == "searxng" else "serper"


def _live_searcher(cfg: Settings) -> SearchBackend:
    from oresearcher.research.web import SearxngSearch, SerperSearch

    return (SearxngSearch if cfg.research.search.backend == "searxng" else SerperSearch)(cfg.research.search)


def _web_crawler(cfg: Settings) -> PageBackend:
    from oresearcher.research.web import WebCrawler

    return WebCrawler(cfg.research.crawl)

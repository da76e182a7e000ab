"""Tasks that make the research environment ready: the model, the search index, a tool smoke test."""

from __future__ import annotations

import time

from prefect import task

from oresearcher.config import Settings


@task(name="prepare-model", retries=1)
def prepare_model(cfg: Settings) -> str:
    """Resolve the configured model; the embedded GGUF is converted to safetensors once."""
    from models.resolve import resolve_model

    return resolve_model(cfg.model.name, cfg.paths.cache)


@task(name="build-search-index")
def build_search_index(cfg: Settings) -> dict[str, int | str]:
    """Build (or reuse, by corpus hash) the local search index."""
    from oresearcher.research.local_index import LocalIndex

    if "local" not in (cfg.research.search.backend, cfg.research.crawl.backend):
        return {"backend": cfg.research.search.backend, "docs": 0}
    start = time.perf_counter()
    index = LocalIndex(cfg.research.search.corpora, cfg.paths.cache)
    return {"backend": index.backend_id, "docs": len(index), "seconds": round(time.perf_counter() - start, 3)}


@task(name="probe-research-tools")
def probe_research_tools(cfg: Settings, queries: list[str]) -> dict[str, float]:
    """Search each query and crawl its top hit through the tape: the tools work end to end."""
    from oresearcher import grammar
    from oresearcher.research.environment import ResearchEnvironment

    env = ResearchEnvironment.from_config(cfg)
    latencies, crawled = [], 0
    for q in queries:
        start = time.perf_counter()
        listing = env.web_search(q, 5)
        latencies.append(time.perf_counter() - start)
        urls = [c for c in grammar.observed_urls(grammar.parse(grammar.observation_text(listing)))]
        if urls and not env.crawl_page(sorted(urls)[0]).startswith("Error:"):
            crawled += 1
    latencies.sort()
    return {"queries": len(queries), "pages_crawled": crawled,
            "search_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
            **{k.replace(".", "_"): float(v) for k, v in env.counts.items()}}

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
    from oresearcher.research.local_index import Feedback, LocalIndex

    if "local" not in (cfg.research.search.backend, cfg.research.crawl.backend):
        return {"backend": cfg.research.search.backend, "docs": 0}
    start = time.perf_counter()
    index = LocalIndex(cfg.research.search.corpora, cfg.paths.cache, cfg.research.snippet_chars,
                       Feedback.of(cfg.research.search))
    return {"backend": index.backend_id, "docs": len(index), "seconds": round(time.perf_counter() - start, 3)}

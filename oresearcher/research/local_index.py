"""The local search engine: a tantivy (BM25) index over the configured corpora, built once, cached by corpus hash.

The index lives in `<cache>/search-index/<fingerprint>/`; a new corpus or schema gets a new folder, and a build
is written to a temporary folder and renamed into place, so a crash mid-build never leaves a broken index.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from oresearcher.research.corpus import Document, corpus_fingerprint, load_corpus, normalize_url
from oresearcher.store import atomic_dir

SCHEMA_VERSION = "v2-content-stop-stem"
ANALYZER = "en_stop_stem"
_QUERY_SYNTAX = re.compile(r"[+\-!(){}\[\]^\"~*?:\\/<>&|']")


@dataclass(frozen=True)
class SearchHit:
    url: str
    title: str
    snippet: str
    date: str = ""


def _analyzer():
    import tantivy

    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.stopword("english"))
            .filter(tantivy.Filter.stemmer("english")).build())


def _schema():
    import tantivy

    # Ranking uses one `content` field (title twice, description, body): per-field BM25 over a short title
    # field lets single title words dominate ("apart" -> "Apartment"); one field measured better on
    # benchmarks/search_queries.jsonl. `body` is indexed only so snippets can highlight the query's terms.
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("content", stored=False, tokenizer_name=ANALYZER)
    sb.add_text_field("title", stored=True, tokenizer_name=ANALYZER)
    sb.add_text_field("body", stored=True, tokenizer_name=ANALYZER)
    sb.add_text_field("description", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("url", stored=True, tokenizer_name="raw")
    sb.add_text_field("url_key", stored=False, tokenizer_name="raw")
    sb.add_text_field("date", stored=True, tokenizer_name="raw")
    return sb.build()


class LocalIndex:
    """BM25 search and by-URL lookup over local corpora. Thread-safe for searching."""

    def __init__(self, corpora: list[str], cache_dir: Path, snippet_chars: int = 300):
        import tantivy

        self.corpora = list(corpora)
        self.snippet_chars = snippet_chars
        self.fingerprint = corpus_fingerprint(self.corpora, SCHEMA_VERSION)
        self.path = Path(cache_dir) / "search-index" / self.fingerprint
        if not (self.path / ".complete").exists():
            self._build()
        self._index = tantivy.Index.open(str(self.path))
        self._index.register_tokenizer(ANALYZER, _analyzer())
        self._searcher = self._index.searcher()
        self._lock = threading.Lock()

    @property
    def backend_id(self) -> str:
        return f"local:{self.fingerprint}"

    def _build(self) -> None:
        import tantivy

        with atomic_dir(self.path) as tmp:
            index = tantivy.Index(_schema(), path=str(tmp))
            index.register_tokenizer(ANALYZER, _analyzer())
            writer = index.writer(heap_size=64 * 1024 * 1024, num_threads=1)
            seen: set[str] = set()
            for spec in self.corpora:
                for doc in load_corpus(spec):
                    key = normalize_url(doc.url)
                    if key in seen:
                        continue  # the same page in two corpora: keep the first
                    seen.add(key)
                    content = f"{doc.title}\n{doc.title}\n{doc.description}\n{doc.text}"
                    writer.add_document(tantivy.Document(
                        content=content, title=doc.title, body=doc.text, description=doc.description, url=doc.url,
                        url_key=key, date=doc.date))
            writer.commit()
            writer.wait_merging_threads()
            (tmp / ".complete").write_text(",".join(self.corpora))

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """Top-k BM25 hits for a free-text query, with a snippet of each body around the query's terms."""
        import tantivy

        text = _QUERY_SYNTAX.sub(" ", query).strip()
        if not text:
            return []
        q, _errors = self._index.parse_query_lenient(text, ["content"])
        snippet_q, _errors = self._index.parse_query_lenient(text, ["body"])
        with self._lock:
            result = self._searcher.search(q, k)
            docs = [self._searcher.doc(addr) for _score, addr in result.hits]
            gen = tantivy.SnippetGenerator.create(self._searcher, snippet_q, self._index.schema, "body")
            gen.set_max_num_chars(self.snippet_chars)
            snippets = [gen.snippet_from_doc(d).fragment() for d in docs]
        return [SearchHit(d["url"][0], d["title"][0], snip or d["body"][0][: self.snippet_chars], d["date"][0])
                for d, snip in zip(docs, snippets, strict=True)]

    def get(self, url: str) -> Document | None:
        """The corpus document at `url` (any spelling that normalizes the same), or None."""
        import tantivy

        q = tantivy.Query.term_query(self._index.schema, "url_key", normalize_url(url))
        with self._lock:
            hits = self._searcher.search(q, 1).hits
            if not hits:
                return None
            d = self._searcher.doc(hits[0][1])
        return Document(d["url"][0], d["title"][0], d["body"][0], d["description"][0], d["date"][0], "local")

    def __len__(self) -> int:
        return self._searcher.num_docs

"""The local search engine: a tantivy (BM25) index over the configured corpora, built once, cached by corpus hash.

The index lives in `<cache>/search-index/<fingerprint>/`; a new corpus or schema gets a new folder, and a build
is written to a temporary folder and renamed into place, so a crash mid-build never leaves a broken index.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
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


@dataclass(frozen=True)
class Feedback:
    """Pseudo-relevance feedback (RM3-style): the query is re-run with the terms that best characterise its first
    `docs` results (term frequency there x inverse document frequency), `terms` of them at weight `weight`, and
    that ranking fills the list after plain BM25's first `keep` results. Research questions describe their
    subject more often than they name it ("who developed the theory of general relativity"); the first results
    name it. Expansion alone lifts recall@10 but lets a feedback term push a near miss to the top ("causes of the
    Black Death" -> Gangrene); keeping the head of the plain ranking keeps the first results as precise as BM25's.
    On benchmarks/search_queries.jsonl: recall@10 0.931 -> 0.956, mean reciprocal rank 0.818 -> 0.821 (chosen
    on its first 42 queries; the 112 after them, written later and never tuned on, agree)."""

    docs: int = 3
    terms: int = 30
    weight: float = 0.2
    keep: int = 3

    def __str__(self) -> str:
        return f"prf{self.docs}-{self.terms}-{self.weight:g}-{self.keep}" if self.docs else "noprf"


class LocalIndex:
    """BM25 search (with pseudo-relevance feedback) and by-URL lookup over local corpora. Thread-safe."""

    def __init__(self, corpora: list[str], cache_dir: Path, snippet_chars: int = 300, feedback: Feedback = Feedback()):
        import tantivy

        self.corpora = list(corpora)
        self.snippet_chars, self.feedback = snippet_chars, feedback
        self.fingerprint = corpus_fingerprint(self.corpora, SCHEMA_VERSION)
        self.path = Path(cache_dir) / "search-index" / self.fingerprint
        if not (self.path / ".complete").exists():
            self._build()
        self._index = tantivy.Index.open(str(self.path))
        self._analyzer = _analyzer()
        self._index.register_tokenizer(ANALYZER, self._analyzer)
        self._searcher = self._index.searcher()
        self._lock = threading.Lock()

    @property
    def backend_id(self) -> str:
        """The corpus and the ranking: the tape keys recorded results by it, so another ranking records anew."""
        return f"local:{self.fingerprint}:{self.feedback}"

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
            addrs = [addr for _score, addr in self._searcher.search(q, k).hits]
            if self.feedback.docs and addrs:
                expanded = self._expanded(q, text, addrs[: self.feedback.docs])
                head = addrs[: self.feedback.keep]
                tail = [a for _s, a in self._searcher.search(expanded, k + len(head)).hits if a not in head]
                addrs = (head + tail)[:k]
            docs = [self._searcher.doc(addr) for addr in addrs]
            gen = tantivy.SnippetGenerator.create(self._searcher, snippet_q, self._index.schema, "body")
            gen.set_max_num_chars(self.snippet_chars)
            snippets = [gen.snippet_from_doc(d).fragment() for d in docs]
        return [SearchHit(d["url"][0], d["title"][0], snip or d["body"][0][: self.snippet_chars], d["date"][0])
                for d, snip in zip(docs, snippets, strict=True)]

    def _expanded(self, query, text: str, first: list):
        """`query` OR'ed with the feedback terms of its `first` results (see `Feedback`)."""
        import tantivy

        fb = self.feedback
        own = set(self._analyzer.analyze(text))
        weights: Counter[str] = Counter()
        for addr in first:
            doc = self._searcher.doc(addr)
            counts = Counter(self._analyzer.analyze(f"{doc['title'][0]} {doc['body'][0]}"))
            total = sum(counts.values())
            for term, n in counts.items():
                if term not in own and len(term) > 2 and not term.isdigit():
                    df = self._searcher.doc_freq("content", term)
                    weights[term] += n / total * math.log(1 + self._searcher.num_docs / (1 + df))
        extra = [(tantivy.Occur.Should, tantivy.Query.boost_query(
            tantivy.Query.term_query(self._index.schema, "content", term), fb.weight))
            for term, _w in weights.most_common(fb.terms)]
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, query), *extra]) if extra else query

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

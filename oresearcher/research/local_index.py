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

SCHEMA_VERSION = "v3-content-stop-stem-feedback"
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
    # benchmarks/search_queries.jsonl. `body` is stored for crawl_page and for snippets.
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("content", stored=False, tokenizer_name=ANALYZER)
    sb.add_text_field("title", stored=True, tokenizer_name=ANALYZER)
    sb.add_text_field("body", stored=True, tokenizer_name=ANALYZER)
    sb.add_text_field("description", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("url", stored=True, tokenizer_name="raw")
    sb.add_text_field("url_key", stored=False, tokenizer_name="raw")
    sb.add_text_field("date", stored=True, tokenizer_name="raw")
    # The document's feedback terms, "term weight term weight ...", precomputed at build time (see `Feedback`).
    sb.add_text_field("feedback", stored=True, tokenizer_name="raw", index_option="basic")
    return sb.build()


FEEDBACK_TERMS_STORED = 60


def feedback_vectors(texts: list[str], analyzer) -> list[str]:
    """Each text's most characteristic terms, as stored: term frequency in it x inverse document frequency."""
    counts = [Counter(analyzer.analyze(t)) for t in texts]
    df = Counter(term for c in counts for term in c)
    n = len(texts)
    out = []
    for c in counts:
        total = sum(c.values()) or 1
        weights = {t: k / total * math.log(1 + n / (1 + df[t])) for t, k in c.items()
                   if len(t) > 2 and not t.isdigit()}
        top = sorted(weights.items(), key=lambda kv: -kv[1])[:FEEDBACK_TERMS_STORED]
        out.append(" ".join(f"{t} {w:.5f}" for t, w in top))
    return out


def _key(addr) -> tuple[int, int]:
    return addr.segment_ord, addr.doc


def snippet(body: str, stems: list[str], chars: int) -> str:
    """About `chars` characters of `body`, from a little before the first word that starts with one of the query's
    stems, cut at word boundaries. (tantivy's snippet generator scores fragments, at four times the cost of a
    whole search here; on a short summary the first match is the fragment.)"""
    stems = [re.escape(t) for t in stems if len(t) > 2]
    m = re.search(r"\b(?:" + "|".join(stems) + ")", body, re.IGNORECASE) if stems else None
    start = 0 if m is None or m.start() < chars // 3 else body.find(" ", m.start() - chars // 3) + 1
    if len(body) - start <= chars:
        return body[start:].strip()
    cut = body.rfind(" ", start, start + chars)
    return body[start : cut if cut > start else start + chars].strip()


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

    @classmethod
    def of(cls, search) -> Feedback:
        """The feedback a `SearchConfig` asks for (`research.search.feedback_*`)."""
        return cls(search.feedback_docs, search.feedback_terms, search.feedback_weight, search.feedback_keep)

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
            docs = []
            for spec in self.corpora:
                for doc in load_corpus(spec):
                    key = normalize_url(doc.url)
                    if key not in seen:  # the same page in two corpora: keep the first
                        seen.add(key)
                        docs.append((key, doc))
            vectors = feedback_vectors([f"{d.title} {d.text}" for _k, d in docs], _analyzer())
            for (key, doc), vector in zip(docs, vectors, strict=True):
                content = f"{doc.title}\n{doc.title}\n{doc.description}\n{doc.text}"
                writer.add_document(tantivy.Document(
                    content=content, title=doc.title, body=doc.text, description=doc.description, url=doc.url,
                    url_key=key, date=doc.date, feedback=vector))
            writer.commit()
            writer.wait_merging_threads()
            (tmp / ".complete").write_text(",".join(self.corpora))

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """Top-k hits for a free-text query (BM25, then feedback; see `Feedback`), each with a snippet of its body
        around the query's first matching term."""
        text = _QUERY_SYNTAX.sub(" ", query).strip()
        if not text:
            return []
        q, _errors = self._index.parse_query_lenient(text, ["content"])
        terms = list(dict.fromkeys(self._analyzer.analyze(text)))
        with self._lock:
            addrs = [addr for _score, addr in self._searcher.search(q, k).hits]
            fetched: dict[tuple[int, int], object] = {}  # by (segment, doc): the first results are read once
            if self.feedback.docs and addrs:
                fetched = {_key(a): self._searcher.doc(a) for a in addrs[: self.feedback.docs]}
                expanded = self._expanded(terms, list(fetched.values()))
                head = addrs[: self.feedback.keep]
                seen = {_key(a) for a in head}
                tail = [a for _s, a in self._searcher.search(expanded, k + len(head)).hits if _key(a) not in seen]
                addrs = (head + tail)[:k]
            docs = [fetched.get(_key(addr)) or self._searcher.doc(addr) for addr in addrs]
        return [SearchHit(d["url"][0], d["title"][0], snippet(d["body"][0], terms, self.snippet_chars), d["date"][0])
                for d in docs]

    def _expanded(self, terms: list[str], first: list):
        """One flat disjunction (which tantivy prunes well): the query's own terms, and the feedback terms of its
        `first` results at the feedback weight (see `Feedback`)."""
        import tantivy

        fb, schema = self.feedback, self._index.schema
        weights: Counter[str] = Counter()
        for doc in first:  # each document's characteristic terms were computed when the index was built
            fields = doc["feedback"][0].split()
            for term, weight in zip(fields[0::2], map(float, fields[1::2]), strict=True):
                weights[term] += weight
        for term in terms:
            weights.pop(term, None)
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(schema, "content", t)) for t in terms]
        clauses += [(tantivy.Occur.Should, tantivy.Query.boost_query(tantivy.Query.term_query(schema, "content", t),
                                                                     fb.weight))
                    for t, _w in weights.most_common(fb.terms)]
        return tantivy.Query.boolean_query(clauses)

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

"""The research environment: local search and crawl, live search APIs (test doubles on 127.0.0.1), the tape."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest
from httpserver import LocalServer, as_json, html

from oresearcher import grammar as g
from oresearcher.research.environment import ResearchEnvironment, merge_hits, truncate_to_tokens
from oresearcher.research.local_index import SearchHit
from oresearcher.research.tape import TapeMiss

BLACK_DEATH = "https://en.wikipedia.org/wiki/Black_Death"


# ------------------------------------------------------------------------------------------------- local backend
def test_local_search_finds_black_death(settings_factory):
    env = ResearchEnvironment.from_config(settings_factory())
    listing = env.web_search("causes of the Black Death")
    assert listing.splitlines()[0] == f"1. [Black Death]({BLACK_DEATH})"
    assert len([ln for ln in listing.splitlines() if ln[:1].isdigit()]) == 10


def results(listing: str) -> list[str]:
    """The URLs of a rendered result list, in order (one `N. [title](url)` line per result)."""
    return re.findall(r"^\d+\. \[[^\]\n]*\]\((\S+)\)$", listing, re.M)


def test_search_deduplicates_across_queries_and_caps_num(settings_factory):
    env = ResearchEnvironment.from_config(settings_factory())
    urls = results(env.web_search("Black Death | Black Death plague | bubonic plague", 7))
    assert len(urls) == 7 and len(set(urls)) == 7
    assert len(results(env.web_search("war", 3))) == 3
    assert len(results(env.web_search("war", 99))) == 20  # the corpus has hundreds of matches; 20 is the cap
    assert len(results(env.execute(g.parse_tool_call(g.WEB_SEARCH, "query=war&num=20")))) == 20


def test_crawl_returns_corpus_document_for_any_spelling_of_its_url(settings_factory):
    env = ResearchEnvironment.from_config(settings_factory())
    page = env.crawl_page(BLACK_DEATH)
    assert page.startswith(f"## [Black Death]({BLACK_DEATH})") and "Yersinia pestis" in page
    for spelling in ("HTTPS://EN.WIKIPEDIA.ORG/wiki/Black_Death", f"{BLACK_DEATH}/", f"{BLACK_DEATH}#Causes",
                     "https://en.wikipedia.org/wiki/Black%5FDeath"):
        assert env.crawl_page(spelling) == page, spelling
    assert env.crawl_page("https://example.org/nope").startswith("Error: page not found in the local corpus")


def test_execute_parsed_tool_calls(settings_factory):
    env = ResearchEnvironment.from_config(settings_factory())
    obs = env.execute(g.parse_tool_call(g.WEB_SEARCH, "query=Black Death&num=3"))
    assert obs.count("\n") >= 2 and obs.startswith("1. [Black Death]")
    assert env.execute(g.parse_tool_call(g.CRAWL_PAGE, "url=file:///etc/passwd")).startswith("Error: not an http")


def test_folder_and_drg_corpora(tmp_path, settings_factory):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zebra.md").write_text("URL: https://zoo.example/zebra\n# Zebra stripes\nZebras have black and white "
                                   "stripes that confuse biting flies.")
    (docs / "notes.jsonl").write_text('{"url": "https://x.example/a", "title": "Quokka", "text": "Quokkas smile."}\n')
    (docs / "page.html").write_text("<html><head><title>Okapi</title></head><body><article><p>" +
                                    "The okapi is a giraffid mammal of the Congo rainforest. " * 5 +
                                    "</p></article></body></html>")
    cfg = settings_factory(f"research.search.corpora=['{docs}', drg]", f"paths.cache_dir={tmp_path / 'cache'}")
    env = ResearchEnvironment.from_config(cfg)
    assert "https://zoo.example/zebra" in env.web_search("zebra stripes flies", 3)
    assert "Quokkas smile." in env.crawl_page("https://x.example/a")
    assert "okapi" in env.web_search("okapi giraffid", 3).lower()
    assert "hopkinsmedicine.org" in env.web_search("is the covid vaccine safe side effects", 5)


def test_index_is_cached_by_corpus_hash(tmp_path, settings_factory):
    from oresearcher.research.local_index import LocalIndex

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Alpha document about aardvarks.")
    first = LocalIndex([str(docs)], tmp_path / "cache")
    assert LocalIndex([str(docs)], tmp_path / "cache").path == first.path
    (docs / "b.txt").write_text("Beta document about badgers.")
    second = LocalIndex([str(docs)], tmp_path / "cache")
    assert second.path != first.path and len(second) == 2


def test_feedback_finds_the_subject_a_question_describes(settings_factory):
    """Pseudo-relevance feedback: the first results of "who developed ... relativity" name Einstein; plain BM25
    leaves him out of the top 10. The ranking is part of the backend's identity on the tape."""
    from oresearcher.research.local_index import Feedback, LocalIndex

    cache = settings_factory().paths.cache
    with_feedback, plain = LocalIndex(["wiki"], cache), LocalIndex(["wiki"], cache, feedback=Feedback(docs=0))
    query = "who developed the theory of general relativity"
    expanded, bm25 = [h.title for h in with_feedback.search(query, 10)], [h.title for h in plain.search(query, 10)]
    assert "Albert Einstein" in expanded and "Albert Einstein" not in bm25
    assert expanded[:3] == bm25[:3]  # the first results, the ones an agent reads first, stay plain BM25's
    assert with_feedback.backend_id != plain.backend_id and with_feedback.path == plain.path  # one index, two rankings


def test_truncate_and_merge():
    text = "word " * 500
    cut = truncate_to_tokens(text, 100)
    assert cut.endswith("[... page truncated]") and cut.count("word") == 100
    assert truncate_to_tokens("short", 100) == "short"
    a, b = SearchHit("https://a", "A", ""), SearchHit("https://b", "B", "")
    assert merge_hits([[a, b], [SearchHit("https://a/", "A2", ""), b]], 5) == [a, b]


# -------------------------------------------------------------------------------------------- live search APIs
@pytest.fixture
def search_api():
    """A stand-in for the remote search APIs (SearXNG and Serper JSON shapes), served on 127.0.0.1."""
    with LocalServer() as s:
        s.routes["/search"] = lambda h: as_json({"results": [
            {"url": "https://example.org/printing", "title": "Printing press", "content": "Gutenberg's press",
             "publishedDate": "2024-01-02"},
            {"url": "https://example.org/printing", "title": "dup", "content": "dup"},
            {"url": "https://example.org/books", "title": "Books", "content": "History of books"}]})
        s.routes["/serper"] = lambda h: as_json({"organic": [
            {"link": "https://example.org/serper", "title": "Serper hit", "snippet": "from Google", "date": "2023"}]})
        yield s


def test_searxng_backend(search_api, settings_factory):
    env = ResearchEnvironment.from_config(settings_factory(
        "research.search.backend=searxng", f"research.search.searxng_url={search_api.base}"))
    listing = env.web_search("printing press", 5)
    assert listing == ("1. [Printing press](https://example.org/printing)\n   Date: 2024-01-02\n   Gutenberg's press\n"
                       "2. [Books](https://example.org/books)\n   History of books")
    assert "format=json" in search_api.requests[0][1]


def test_serper_backend_sends_key_and_never_records_it(search_api, settings_factory, monkeypatch, tmp_path):
    monkeypatch.setenv("TEST_SERPER_KEY", "sk-secret-123")
    cfg = settings_factory("research.search.backend=serper", f"research.search.serper_url={search_api.base}/serper",
                           "research.search.serper_api_key_env=TEST_SERPER_KEY")
    env = ResearchEnvironment.from_config(cfg)
    assert env.web_search("anything").startswith("1. [Serper hit](https://example.org/serper)")
    method, _path, headers, body = search_api.requests[0]
    assert method == "POST" and headers["X-API-KEY"] == "sk-secret-123" and json.loads(body) == {"q": "anything", "num": 10}
    assert env.tape.stats()["calls"] == 1
    assert not any(b"sk-secret-123" in p.read_bytes() for p in tmp_path.glob("tape.sqlite*"))


def test_serper_without_key_is_a_clear_error(search_api, settings_factory, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    env = ResearchEnvironment.from_config(settings_factory(
        "research.search.backend=serper", "research.search.serper_api_key_env=NO_SUCH_KEY"))
    assert env.web_search("x") == "Error: Serper search needs an API key in $NO_SUCH_KEY"


def test_live_search_retries_transient_errors(search_api, settings_factory):
    calls = []

    def flaky(h):
        calls.append(1)
        return (503, {}, b"busy") if len(calls) < 3 else as_json({"results": [{"url": "https://ok.org", "title": "OK"}]})

    search_api.routes["/search"] = flaky
    env = ResearchEnvironment.from_config(settings_factory(
        "research.search.backend=searxng", f"research.search.searxng_url={search_api.base}",
        "research.search.retries=2"))
    assert env.web_search("q").startswith("1. [OK](https://ok.org)") and len(calls) == 3


def test_unreachable_search_server_is_a_clear_transient_error(settings_factory):
    with LocalServer() as s:
        dead = s.base
    env = ResearchEnvironment.from_config(settings_factory(
        "research.search.backend=searxng", f"research.search.searxng_url={dead}", "research.search.retries=0"))
    out = env.web_search("q")
    assert out.startswith("Error: search API unreachable")
    assert env.counts["search.errors"] == 1


def test_slow_search_api_times_out_as_a_transient_error(search_api, settings_factory):
    import threading

    release = threading.Event()
    search_api.routes["/search"] = lambda h: (release.wait(60), as_json({"results": []}))[1]
    env = ResearchEnvironment.from_config(settings_factory(
        "research.search.backend=searxng", f"research.search.searxng_url={search_api.base}",
        "research.search.retries=1", "research.search.timeout_s=0.3"))
    try:
        start = time.perf_counter()
        assert env.web_search("q").startswith("Error: search API timed out after 0.3 s")
        assert time.perf_counter() - start < 10  # two 0.3 s attempts and a backoff, with a wide margin
        assert len(search_api.requests) == 2 and not release.is_set()  # retried once, the server never answered
        assert env.tape.get(env.search_id, "search", {"query": "q", "k": 10})["transient"]  # retried next time
    finally:
        release.set()


# -------------------------------------------------------------------------------------------------- the tape
def test_live_mode_keeps_no_tape(settings_factory, tmp_path):
    env = ResearchEnvironment.from_config(settings_factory("research.tape.mode=live"))
    assert env.web_search("printing press").startswith("1. [")
    assert env.tape is None and not (tmp_path / "tape.sqlite").exists()


def test_recorded_run_replays_identically_offline(search_api, settings_factory, monkeypatch):
    search_api.routes["/page"] = html("<article><p>" + "A page about presses and printing history. " * 10 +
                                      "</p></article>", "Press page")
    live = [f"research.search.searxng_url={search_api.base}", "research.search.backend=searxng",
            "research.crawl.backend=web", "research.crawl.allow_hosts=['127.0.0.1']"]
    recorder = ResearchEnvironment.from_config(settings_factory(*live, "research.tape.mode=record"))
    calls = [("search", "printing press | books"), ("crawl", search_api.base + "/page"),
             ("crawl", search_api.base + "/missing"), ("search", "printing press")]
    recorded = [recorder.web_search(a) if t == "search" else recorder.crawl_page(a) for t, a in calls]
    n_requests = len(search_api.requests)
    # Record mode answers a repeated call from the tape: no second request.
    assert recorder.web_search("printing press") == recorded[3] and len(search_api.requests) == n_requests

    search_api.shutdown()
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("replay touched the network"))
    monkeypatch.setattr("oresearcher.research.environment._live_searcher", lambda cfg: pytest.fail("live backend"))
    monkeypatch.setattr("oresearcher.research.environment._web_crawler", lambda cfg: pytest.fail("live backend"))
    player = ResearchEnvironment.from_config(settings_factory(*live, "research.tape.mode=replay"))
    replayed = [player.web_search(a) if t == "search" else player.crawl_page(a) for t, a in calls]
    assert replayed == recorded
    assert "Press page" in recorded[1] and recorded[2].startswith("Error: HTTP 404")
    with pytest.raises(TapeMiss, match="not on the tape"):
        player.web_search("never recorded")


def test_transient_errors_are_retried_in_record_mode(settings_factory, search_api):
    state = {"down": True}
    search_api.routes["/search"] = lambda h: (503, {}, b"") if state["down"] else as_json(
        {"results": [{"url": "https://ok.org", "title": "OK"}]})
    cfg = settings_factory("research.search.backend=searxng", f"research.search.searxng_url={search_api.base}",
                           "research.search.retries=0")
    env = ResearchEnvironment.from_config(cfg)
    assert env.web_search("q").startswith("Error: search API answered HTTP 503")
    state["down"] = False
    assert env.web_search("q").startswith("1. [OK]")


def test_tape_is_shared_by_concurrent_agents(settings_factory):
    from concurrent.futures import ThreadPoolExecutor

    env = ResearchEnvironment.from_config(settings_factory())
    queries = [f"history of {t}" for t in ("Rome", "China", "Egypt", "India", "Persia", "Greece", "Japan", "Peru")]
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(env.web_search, queries * 3))
    assert first[:8] == first[8:16] == first[16:]
    assert env.tape.stats()["calls.search"] == 8


# ---------------------------------------------------------------------------------------------------- the CLI
def test_cli_search_and_crawl_print_what_the_agent_sees(settings_factory, tmp_path):
    ResearchEnvironment.from_config(settings_factory())  # the index exists: the CLI only opens it
    args = ["--set", f"research.tape.path={tmp_path / 'cli-tape.sqlite'}"]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "oresearcher.cli", "search", "causes of the Black Death", *args],
                         capture_output=True, text=True, check=True).stdout
    assert time.perf_counter() - start < 10  # interpreter start included; the search itself is milliseconds
    assert out.startswith(f"1. [Black Death]({BLACK_DEATH})")
    out = subprocess.run([sys.executable, "-m", "oresearcher.cli", "crawl", BLACK_DEATH, *args],
                         capture_output=True, text=True, check=True).stdout
    assert "Yersinia pestis" in out


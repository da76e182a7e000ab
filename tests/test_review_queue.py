"""The review queue and the page's server, without a browser: claims, verdicts, persistence, the token, the bind."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from oresearcher.config import ReviewConfig
from oresearcher.review.queue import ReviewError, ReviewQueue
from oresearcher.review.server import COOKIE, ReviewServer

TOKEN = "t0ken-for-tests-0123456789"


def items(n: int, topic: str = "History") -> list[dict]:
    return [{"trace_id": f"trace-{i}", "topic": topic, "payload": {"query": f"q{i}"}} for i in range(n)]


def test_two_reviewers_never_hold_the_same_item(tmp_path):
    """Many reviewers claim at once, from threads with their own connections: every claim is a different item."""
    q = ReviewQueue(tmp_path / "review.sqlite")
    q.add_batch("b1", items(12))
    got: dict[str, int | None] = {}
    barrier = threading.Barrier(12)

    def claim(name: str) -> None:
        barrier.wait()
        item = ReviewQueue(tmp_path / "review.sqlite").claim(name, lease_s=60)
        got[name] = item and item["id"]

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = list(got.values())
    assert None not in ids and len(set(ids)) == 12
    assert q.claim("r13", lease_s=60) is None  # all twelve are held


def test_a_reviewer_gets_back_their_item_and_an_expired_lease_frees_it(tmp_path):
    q = ReviewQueue(tmp_path / "review.sqlite")
    q.add_batch("b1", items(2))
    first = q.claim("alice", lease_s=60)
    assert q.claim("alice", lease_s=60)["id"] == first["id"]  # a reload shows the same item
    assert q.claim("bob", lease_s=60)["id"] != first["id"]
    with pytest.raises(ReviewError, match="being reviewed by alice"):
        q.decide(first["id"], "bob", "accept", None, "", lease_s=60)
    time.sleep(0.05)
    assert q.claim("carol", lease_s=0.01)["id"] == first["id"]  # alice walked away: her lease ran out


def test_verdicts_are_stored_with_reviewer_and_time_and_survive_reopening(tmp_path):
    q = ReviewQueue(tmp_path / "review.sqlite")
    assert q.add_batch("b1", items(3)) == 3
    assert q.add_batch("b1", items(3)) == 0  # queuing a batch again changes nothing
    a = q.claim("alice", 60)
    q.decide(a["id"], "alice", "reject", "off_topic", "about something else", 60)
    with pytest.raises(ReviewError, match="already decided"):
        q.decide(a["id"], "alice", "accept", None, "", 60)
    again = ReviewQueue(tmp_path / "review.sqlite")  # a restarted page
    p = again.progress("b1")
    assert (p.items, p.decided, p.rejected, p.done) == (3, 1, 1, False)
    row = again.verdicts("b1")[0]
    assert row["verdict"] == "reject" and row["reason_code"] == "off_topic" and row["reviewer"] == "alice"
    assert row["comment"] == "about something else" and time.time() - row["decided_at"] < 60


def test_the_newest_batch_is_served_first(tmp_path):
    """A later filter run supersedes an earlier one: its sample comes first, the older one's after."""
    q = ReviewQueue(tmp_path / "review.sqlite")
    q.add_batch("old", items(1))
    time.sleep(0.01)
    q.add_batch("new", items(1))
    assert [q.claim(r, 60)["batch"] for r in ("a", "b")] == ["new", "old"]


@pytest.fixture
def server(tmp_path):
    q = ReviewQueue(tmp_path / "review.sqlite")
    q.add_batch("b1", items(2))
    srv = ReviewServer(q, ReviewConfig(port=0), TOKEN).start()
    yield srv
    srv.stop()


def test_every_request_needs_the_token(server):
    for path in ("/", "/api/next?reviewer=a", "/api/progress", "/static/app.js"):
        assert httpx.get(server.url + path.lstrip("/")).status_code == 401
        assert httpx.get(server.url + path.lstrip("/"), headers={"Authorization": "Bearer wrong-token-0000000"}
                         ).status_code == 401
    assert httpx.post(server.url + "api/items/1/verdict", json={"verdict": "accept"}).status_code == 401
    ok = httpx.get(server.url + "api/progress", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"items": 2, "decided": 0, "rejected": 0}


def test_the_token_in_the_address_becomes_a_cookie_and_leaves_the_address(server):
    r = httpx.get(server.url + f"?token={TOKEN}")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert f"{COOKIE}={TOKEN}" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
    page = httpx.get(server.url, cookies={COOKIE: TOKEN})
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]


def test_verdicts_through_the_api(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    item = httpx.get(server.url + "api/next?reviewer=alice", headers=auth).json()["item"]
    url = server.url + f"api/items/{item['id']}/verdict"
    assert httpx.post(url, headers=auth, content=b"verdict=accept").status_code == 415  # not a form post
    no_reason = httpx.post(url, headers=auth, json={"reviewer": "alice", "verdict": "reject"})
    assert no_reason.status_code == 409 and "reason code" in no_reason.text
    by_bob = httpx.post(url, headers=auth, json={"reviewer": "bob", "verdict": "accept"})
    assert by_bob.status_code == 409 and "alice" in by_bob.text
    ok = httpx.post(url, headers=auth, json={"reviewer": "alice", "verdict": "reject", "reason_code": "format"})
    assert ok.status_code == 200 and ok.json()["progress"] == {"items": 2, "decided": 1, "rejected": 1}


def test_it_listens_on_localhost_and_answers_only_local_host_names(server):
    assert server.httpd.server_address[0] == "127.0.0.1"
    rebound = httpx.get(server.url + "api/progress", headers={"Authorization": f"Bearer {TOKEN}",
                                                              "Host": "attacker.example:8765"})
    assert rebound.status_code == 403


def test_a_short_token_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        ReviewServer(ReviewQueue(tmp_path / "r.sqlite"), ReviewConfig(port=0), "short")

"""The human spot-check queue: `data/review.sqlite`, shared by the review page and the waiting filter flow.

A batch is one filtered dataset version; its items are the sampled traces, served newest batch first. A reviewer *claims* an item before
seeing it: a claim is one transaction that picks an item nobody holds (or whose holder's lease ran out), so two
reviewers never get the same item at once. A verdict (accept / reject, a reason code, a comment) is stored with
the reviewer and the time; the queue is a file, so verdicts and claims survive a restart of the page.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from oresearcher.sqlite import ThreadLocalDB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (batch TEXT PRIMARY KEY, created REAL NOT NULL, label TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, batch TEXT NOT NULL, trace_id TEXT NOT NULL, topic TEXT NOT NULL,
    payload TEXT NOT NULL, claimed_by TEXT, claimed_at REAL,
    verdict TEXT CHECK (verdict IN ('accept', 'reject')), reason_code TEXT, comment TEXT, reviewer TEXT,
    decided_at REAL, UNIQUE (batch, trace_id));
"""


class ReviewError(ValueError):
    """A verdict that cannot be stored: an unknown item, one held by someone else, or already decided."""


@dataclass
class Progress:
    items: int
    decided: int
    rejected: int

    @property
    def done(self) -> bool:
        return self.items > 0 and self.decided == self.items


def queue_path(data_dir: Path) -> Path:
    return Path(data_dir) / "review.sqlite"


class ReviewQueue:
    def __init__(self, path: Path):
        self.db = ThreadLocalDB(path, _SCHEMA)

    def add_batch(self, batch: str, items: list[dict], label: str = "") -> int:
        """Queue `items` ({trace_id, topic, payload}) under `batch`; items already queued stay as they are.
        Returns how many were new."""
        before = self.progress(batch).items
        self.db.write([("INSERT OR IGNORE INTO batches VALUES (?, ?, ?)", (batch, time.time(), label))] + [
            ("INSERT OR IGNORE INTO items (batch, trace_id, topic, payload) VALUES (?, ?, ?, ?)",
             (batch, it["trace_id"], it.get("topic", ""), json.dumps(it["payload"], ensure_ascii=False)))
            for it in items])
        return self.progress(batch).items - before

    def claim(self, reviewer: str, lease_s: float) -> dict | None:
        """The item `reviewer` holds, else the first undecided one of the newest batch that nobody holds (or whose
        holder's lease ran out)."""
        db = self.db.conn()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")  # one claim at a time across threads and processes
        try:
            row = db.execute("SELECT id FROM items WHERE verdict IS NULL AND claimed_by = ? ORDER BY id LIMIT 1",
                             (reviewer,)).fetchone()
            if row is None:  # the newest batch first: an older one was superseded by a later filter run
                row = db.execute("SELECT id FROM items JOIN batches USING (batch) WHERE verdict IS NULL AND "
                                 "(claimed_by IS NULL OR claimed_at < ?) ORDER BY batches.created DESC, id LIMIT 1",
                                 (now - lease_s,)).fetchone()
            if row is not None:
                db.execute("UPDATE items SET claimed_by = ?, claimed_at = ? WHERE id = ?", (reviewer, now, row[0]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.item(row[0]) if row else None

    def decide(self, item_id: int, reviewer: str, verdict: str, reason_code: str | None, comment: str,
               lease_s: float) -> None:
        if verdict not in ("accept", "reject"):
            raise ReviewError(f"verdict must be 'accept' or 'reject', not {verdict!r}")
        db = self.db.conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT claimed_by, claimed_at, verdict FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise ReviewError(f"no review item {item_id}")
            holder, claimed_at, decided = row
            if decided is not None:
                raise ReviewError(f"item {item_id} was already decided")
            if holder not in (None, reviewer) and claimed_at >= time.time() - lease_s:
                raise ReviewError(f"item {item_id} is being reviewed by {holder}")
            db.execute("UPDATE items SET verdict = ?, reason_code = ?, comment = ?, reviewer = ?, decided_at = ?, "
                       "claimed_by = ? WHERE id = ?",
                       (verdict, reason_code if verdict == "reject" else None, comment, reviewer, time.time(),
                        reviewer, item_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def item(self, item_id: int) -> dict | None:
        cur = self.db.conn().execute("SELECT * FROM items WHERE id = ?", (item_id,))
        row = cur.fetchone()
        if row is None:
            return None
        item = dict(zip([c[0] for c in cur.description], row, strict=True))
        item["payload"] = json.loads(item["payload"])
        return item

    def progress(self, batch: str | None = None) -> Progress:
        where, args = ("WHERE batch = ?", (batch,)) if batch else ("", ())
        row = self.db.conn().execute(
            "SELECT COUNT(*), COUNT(verdict), COALESCE(SUM(verdict = 'reject'), 0) FROM items " + where, args).fetchone()
        return Progress(*row)

    def verdicts(self, batch: str) -> list[dict]:
        cur = self.db.conn().execute("SELECT trace_id, topic, verdict, reason_code, comment, reviewer, decided_at "
                                     "FROM items WHERE batch = ? ORDER BY id", (batch,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

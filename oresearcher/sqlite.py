"""SQLite the way every store here uses it: one connection per thread, WAL, short waits on locks.

Stores (the tool tape, the LLM response cache and cost ledger, later the review queue) are single files under
`data/`, shared by concurrent agents in threads and by separate processes.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class ThreadLocalDB:
    def __init__(self, path: Path, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.conn().executescript(schema)

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at each commit's WAL write; fast enough per call
            self._local.conn = conn
        return conn

    def write(self, statements: list[tuple[str, tuple]]) -> None:
        """Run statements in one immediate transaction: all or nothing."""
        db = self.conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

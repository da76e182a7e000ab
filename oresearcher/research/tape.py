"""The record/replay tape: every tool call and its result, content-addressed, in one SQLite file.

Modes (config `research.tape.mode`):
- `live`: the tape is not used.
- `record`: a call already on the tape is answered from it (a re-run never pays for the same search twice);
  otherwise the live backend answers and the result is stored. Transient failures (timeouts, 5xx) are
  stored too, but retried live the next time.
- `replay`: answered from the tape only; a call that is not on it raises `TapeMiss`. No backend is built,
  no network is touched, and results are identical to the recording.

Results are JSON blobs keyed by the SHA-256 of their content (identical results are stored once); calls are
keyed by the SHA-256 of (backend, tool, arguments). SQLite in WAL mode lets concurrent agents share one tape.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from oresearcher.sqlite import ThreadLocalDB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, content TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY, backend TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,
    result_sha TEXT NOT NULL REFERENCES blobs(sha), recorded_at REAL NOT NULL
);
"""


class TapeMiss(LookupError):
    """Replay mode met a call that was never recorded."""


def call_key(backend: str, tool: str, args: dict) -> str:
    return hashlib.sha256(json.dumps([backend, tool, args], sort_keys=True).encode()).hexdigest()


class Tape:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = ThreadLocalDB(self.path, _SCHEMA)

    def get(self, backend: str, tool: str, args: dict) -> dict | None:
        row = self.db.conn().execute(
            "SELECT b.content FROM calls c JOIN blobs b ON b.sha = c.result_sha WHERE c.key = ?",
            (call_key(backend, tool, args),)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, backend: str, tool: str, args: dict, result: dict) -> None:
        content = json.dumps(result, sort_keys=True, ensure_ascii=False)
        sha = hashlib.sha256(content.encode()).hexdigest()
        self.db.write([  # one transaction: a call never points at a missing blob
            ("INSERT OR IGNORE INTO blobs (sha, content) VALUES (?, ?)", (sha, content)),
            ("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?)",
             (call_key(backend, tool, args), backend, tool, json.dumps(args, sort_keys=True), sha, time.time())),
        ])

    def stats(self) -> dict[str, int]:
        db = self.db.conn()
        calls = dict(db.execute("SELECT tool, COUNT(*) FROM calls GROUP BY tool").fetchall())
        return {"calls": sum(calls.values()), **{f"calls.{k}": v for k, v in calls.items()},
                "blobs": db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]}

    def close(self) -> None:
        self.db.close()

"""Crash-safe files: atomic whole-file writes and an append-only JSONL record store.

- `atomic_write_text`: write a temp file beside the target, fsync, rename. Readers see the old or the new
  version, never half of one; a failed stage leaves the earlier version untouched.
- `atomic_dir`: the same for a directory (a converted model, a search index): build it aside, rename it in.
- `JsonlStore`: one JSON record per line, appended and fsynced one at a time. After a crash, a torn last line
  is cut off on open and the ids already written are known, so a re-run skips finished work.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Path):
    """Yield a temp directory beside `target`; on success it becomes `target`, on failure it is removed.

    If another process finished the same target first, its result is kept and ours discarded (both were
    built from the same inputs).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class JsonlStore:
    """`final(record)` says whether a record settles its key; a non-final one (a retryable failure) may be
    superseded by a later record with the same key, and readers see the latest (`latest()`)."""

    def __init__(self, path: Path, key_fields: tuple[str, ...], final: Callable[[dict], bool] = lambda r: True):
        self.path = Path(path)
        self.key_fields = key_fields
        self.final = final
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.keys: set[tuple] = set()  # keys with a final record
        self._repair_and_index()

    def _key(self, record: dict) -> tuple:
        return tuple(record[f] for f in self.key_fields)

    def _repair_and_index(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a torn write from a crash: drop the partial line
            with self.path.open("r+b") as f:
                f.truncate(end)
        for line in raw[:end].splitlines():
            if line.strip() and self.final(record := json.loads(line)):
                self.keys.add(self._key(record))

    def __contains__(self, key: tuple) -> bool:
        return key in self.keys

    def append(self, record: dict) -> bool:
        """Write `record` unless its key is already stored; True if written."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            key = self._key(record)
            if key in self.keys:
                return False
            with self.path.open("ab") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # other processes (Dask workers) append to the same file
                start = f.seek(0, os.SEEK_END)  # the end now, after their appends
                try:
                    f.write(line.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:
                    f.truncate(start)  # a failed write (disk full) must not leave half a line behind
                    raise
            if self.final(record):
                self.keys.add(key)
            return True

    def latest(self) -> list[dict]:
        """The last record of each key, in order of first appearance."""
        by_key: dict[tuple, dict] = {}
        for record in self:
            by_key[self._key(record)] = record
        return list(by_key.values())

    def __iter__(self) -> Iterator[dict]:
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)

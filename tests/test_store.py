"""Crash-safe files: a torn last line is cut off on open, keys already written are known, a failed write leaves
nothing half-written."""

from __future__ import annotations

import json

import pytest

from oresearcher.store import JsonlStore, atomic_write_text


def test_torn_last_line_is_cut_and_written_keys_are_skipped(tmp_path):
    path = tmp_path / "records.jsonl"
    store = JsonlStore(path, ("id",))
    assert store.append({"id": 1, "x": "a"}) and store.append({"id": 2, "x": "b"})
    with path.open("ab") as f:
        f.write(b'{"id": 3, "x": "half a rec')  # the process died mid-write
    reopened = JsonlStore(path, ("id",))
    assert [r["id"] for r in reopened] == [1, 2] and path.read_bytes().endswith(b"}\n")
    assert not reopened.append({"id": 2, "x": "again"})  # settled: never written twice
    assert reopened.append({"id": 3, "x": "c"})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_failed_append_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    store = JsonlStore(path, ("id",))
    store.append({"id": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError):
        store.append({"id": 2, "big": "x" * 10_000})
    assert path.read_text() == '{"id": 1}\n' and (2,) not in store


def test_atomic_write_keeps_the_old_version_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "seeds.jsonl"
    atomic_write_text(target, "old\n")
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]

"""Tasks of seed ingestion: read and check seed files, write a new seed version."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from oresearcher.config import Settings
from oresearcher.seeds import IngestResult, ingest_files, write_seed_version


@task(name="check-seeds")
def check_seed_files(paths: list[str], cfg: Settings) -> IngestResult:
    """Validate, normalise, de-duplicate and contamination-check every record of the seed files."""
    return ingest_files([Path(p) for p in paths], cfg.ingest)


@task(name="write-seed-version")
def write_seeds(result: IngestResult, paths: list[str], cfg: Settings) -> str:
    """Write the seed set and its report atomically; returns the version id."""
    return write_seed_version(result, cfg.paths.data, [Path(p) for p in paths])


def _inbox_ledger(cfg: Settings) -> Path:
    return cfg.paths.data / "seeds" / "inbox.json"


@task(name="new-inbox-files")
def new_inbox_files(cfg: Settings) -> list[Path]:
    """Seed files in the inbox that no completed retrain has taken yet (by content hash), oldest first."""
    import hashlib
    import json

    inbox = cfg.paths.resolve(cfg.retrain.inbox)
    if not inbox.is_dir():
        return []
    ledger = json.loads(_inbox_ledger(cfg).read_text()) if _inbox_ledger(cfg).is_file() else {}
    files = sorted({p for pattern in cfg.retrain.patterns for p in inbox.glob(pattern) if p.is_file()},
                   key=lambda p: (p.stat().st_mtime, p.name))
    return [p for p in files if hashlib.sha256(p.read_bytes()).hexdigest() not in ledger]


@task(name="record-inbox-files")
def record_inbox_files(cfg: Settings, files: list[Path], seed_version: str | None) -> None:
    """Mark inbox files as taken (content hash → name, the seed version they went into)."""
    import hashlib
    import json

    from oresearcher.store import atomic_write_text

    path = _inbox_ledger(cfg)
    ledger = json.loads(path.read_text()) if path.is_file() else {}
    for p in files:
        ledger[hashlib.sha256(p.read_bytes()).hexdigest()] = {"name": p.name, "seed_version": seed_version}
    atomic_write_text(path, json.dumps(ledger, indent=1))

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

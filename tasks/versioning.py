"""Tasks that version what a stage wrote under `data/` (DVC)."""

from __future__ import annotations

from prefect import task

from oresearcher.config import Settings


@task(name="version-data")
def version_data(cfg: Settings) -> str | None:
    """Record a new DVC version of the data tree and push it; None when the checkout has no DVC repo."""
    from oresearcher.versioning import dvc_root
    from oresearcher.versioning import version_data as dvc_version

    if dvc_root(cfg.paths.data.parent) is None:
        return None
    return dvc_version(cfg.paths.data)

"""Tasks that version the data tree (DVC) and record, on a stage's MLflow run, the datasets it read: each one's
DVC digest and path in a version pushed to the remote, which is what `oresearcher restore RUN_ID` brings back."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prefect import task

from oresearcher.config import Settings


@task(name="version-data")
def version_data(cfg: Settings) -> str | None:
    """Record a new DVC version of the data tree and push it; None when the checkout has no DVC repo."""
    from oresearcher.versioning import dvc_root
    from oresearcher.versioning import version_data as dvc_version

    if dvc_root(cfg.paths.data.parent) is None:
        return None
    return dvc_version(cfg.paths.data, cfg.dvc.resolved_remote(), cfg.dvc.push)


@task(name="record-inputs")
def record_inputs(cfg: Settings, client, run_id: str, datasets: list[tuple[str, Path]],
                  context: str = "training", version: str | None = None) -> str | None:
    """Version the tree (so the version holds exactly what the run is about to read), then log each (name, path
    under the data tree) as an MLflow dataset input: digest = its DVC digest, tags `dvc.version` and `dvc.path`;
    the run gets `dvc.data_version` and `dvc.remote`. Without a DVC repository the digests come from the files.
    `version`: one already recorded that holds these datasets (several runs reading the same ones)."""
    from oresearcher.registry import log_dataset_input
    from oresearcher.versioning import dataset_digest, dvc_root, manifest, remote_url

    data = cfg.paths.data.resolve()
    version = version or version_data.fn(cfg)
    entries = manifest(data, version) if version else _files_manifest(data)
    for name, path in datasets:
        rel = Path(path).resolve().relative_to(data).as_posix()
        tags = {"dvc.path": rel, **({"dvc.version": version} if version else {})}  # path: for lineage, always
        log_dataset_input(client, run_id, name, dataset_digest(entries, rel), str(Path(path).resolve()), context,
                          tags)
    if version:
        remote = remote_url(dvc_root(data.parent), cfg.dvc.resolved_remote())
        client.set_tag(run_id, "dvc.data_version", version)
        client.set_tag(run_id, "dvc.remote", _without_credentials(remote))
    return version


@task(name="record-outputs")
def record_outputs(cfg: Settings, client, run_id: str, paths: list[Path], version: str | None) -> None:
    """Tag the run with what it wrote: `dvc.out.<path in the data tree>` = that dataset's digest in `version` (the
    one recorded after writing), which is how a lineage card finds the run that made a dataset."""
    from oresearcher.lineage import OUT_TAG
    from oresearcher.versioning import dataset_digest, manifest

    data = cfg.paths.data.resolve()
    entries = manifest(data, version) if version else _files_manifest(data)
    for path in paths:
        rel = Path(path).resolve().relative_to(data).as_posix()
        client.set_tag(run_id, OUT_TAG + rel, dataset_digest(entries, rel))


@task(name="lineage-card")
def lineage_card(client, run_id: str, title: str) -> str:
    """The run's lineage card (`oresearcher.lineage`), logged on it as `lineage.md`; returns the markdown."""
    from oresearcher.lineage import lineage_card as walk
    from oresearcher.lineage import render

    text = render(walk(client, run_id), title)
    client.log_text(run_id, text, "lineage.md")
    return text


def _files_manifest(data: Path) -> dict[str, str]:
    """relpath -> md5 of the tree's files, as a DVC version would list them (the stores left out)."""
    from fnmatch import fnmatch

    from oresearcher.versioning import STORE_PATTERNS, file_md5

    return {p.relative_to(data).as_posix(): file_md5(p) for p in sorted(data.rglob("*"))
            if p.is_file() and not any(fnmatch(p.name, pat) for pat in STORE_PATTERNS)}


def _without_credentials(url: str) -> str:
    """A remote URL as it may be logged: any user:password@ part dropped (object stores take keys from the
    environment; a URL should not carry them, but one that does must not reach MLflow)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return url


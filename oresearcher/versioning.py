"""DVC versioning of the data tree, and bringing back the exact files a run read. DVC has no public Python API
for add/push/pull, so this calls its CLI.

`data/` is one DVC-tracked tree (`data.dvc`). A stage calls `version_data` before it reads (so its run records the
version holding its inputs) and after it writes; each call records a new version of the tree (the `.dir` hash in
`data.dvc`) and pushes it to the remote. Each dataset inside the tree (a seed set, the traces, a filtered version,
frozen evaluation queries and reference reports, evaluation results) gets its own digest from that version's
manifest, computed the way DVC hashes a directory, so a dataset that did not change keeps its digest when the rest
of the tree moves on. `restore` pulls the datasets a run read from the remote, at the version the run recorded,
into a folder of their own: byte for byte, checked against the manifest.

The SQLite stores under `data/` (the response cache, the research tape, the review queue) are mutable working
state, not datasets: the DVC repository's `.dvcignore` keeps them out of every version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

# The mutable stores: never part of a version (`.dvcignore` patterns).
STORE_PATTERNS = ("*.sqlite", "*.sqlite-wal", "*.sqlite-shm", "*.tmp")
REMOTE_NAME = "oresearcher"


class VersioningError(RuntimeError):
    pass


def _dvc(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {cwd}:\n{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def dvc_root(path: Path) -> Path | None:
    """The DVC repository holding `path` (the nearest parent with a .dvc folder), if any."""
    for parent in [Path(path).resolve(), *Path(path).resolve().parents]:
        if (parent / ".dvc").is_dir():
            return parent
    return None


def ignore_stores(root: Path) -> None:
    """Make sure the repository's `.dvcignore` keeps the mutable stores out of the data tree's versions."""
    path = Path(root) / ".dvcignore"
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in STORE_PATTERNS if p not in lines]
    if missing:
        with path.open("a") as f:
            f.write(("\n" if lines and lines[-1] else "") + "# mutable stores (caches, tape, review queue), not datasets\n"
                    + "".join(p + "\n" for p in missing))


def remote_url(root: Path, configured: str | None) -> str:
    """The remote versions go to: `configured` (a folder, relative to the DVC repository, or s3://, gs://, ...),
    else the repository's default remote (this project's: the `.dvc-storage` folder beside the checkout)."""
    if configured:
        return configured if "://" in configured else str((Path(root) / configured).resolve())
    from dvc.repo import Repo

    config = Repo(str(root)).config
    name = config["core"].get("remote")
    if not name:
        raise VersioningError(f"the DVC repository {root} has no default remote; set dvc.remote in the config "
                              "or $ORESEARCHER_DVC_REMOTE")
    return str(config["remote"][name]["url"])


def version_data(data_dir: Path, remote: str | None = None, push: bool = True) -> str:
    """`dvc add` the data tree and push it to `remote` (see `remote_url`); returns its DVC hash (the version)."""
    data_dir = Path(data_dir).resolve()
    root = dvc_root(data_dir.parent)
    if root is None:
        raise VersioningError(f"{data_dir} is not inside a DVC repository (run `dvc init`)")
    ignore_stores(root)
    rel = data_dir.relative_to(root)
    _dvc(["add", "--quiet", str(rel)], root)
    if push:
        if remote:
            _dvc(["remote", "add", "--local", "--force", REMOTE_NAME, remote_url(root, remote)], root)
        _dvc(["push", "--quiet", *(["--remote", REMOTE_NAME] if remote else []), str(rel) + ".dvc"], root)
    meta = yaml.safe_load((root / f"{rel}.dvc").read_text())
    return meta["outs"][0]["md5"]


# ------------------------------------------------------------------------------- datasets inside a version

def manifest(data_dir: Path, version: str) -> dict[str, str]:
    """relpath -> md5 of every file in `version` of the tree, from the DVC cache of the repository holding it."""
    root = dvc_root(Path(data_dir).resolve().parent)
    md5 = version.removesuffix(".dir")
    path = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / f"{md5[2:]}.dir"
    return {e["relpath"]: e["md5"] for e in json.loads(path.read_text())}


def dataset_digest(entries: dict[str, str], relpath: str) -> str:
    """The digest of the dataset at `relpath` (a file or a folder) in a manifest: a file's md5, or a folder's
    hash as DVC computes it (`dvc add` of that folder alone gives the same, without the `.dir`)."""
    if relpath in entries:
        return entries[relpath]
    prefix = relpath.rstrip("/") + "/"
    inside = [{"md5": md5, "relpath": p[len(prefix):]} for p, md5 in sorted(entries.items()) if p.startswith(prefix)]
    if not inside:
        raise VersioningError(f"{relpath} is not in this version of the data tree")
    return hashlib.md5(json.dumps(inside, sort_keys=True).encode()).hexdigest()


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Restored:
    relpath: str
    version: str
    files: int


def restore(version: str, relpaths: list[str], remote: str, into: Path) -> list[Restored]:
    """Pull `relpaths` of the tree's `version` from `remote` into `into/<relpath>`, in a scratch DVC repository
    (nothing of the current checkout's data or cache is read or touched), and check every file against the
    version's manifest."""
    into = Path(into)
    with tempfile.TemporaryDirectory(prefix="oresearcher-restore-") as tmp:
        work = Path(tmp)
        _dvc(["init", "--quiet", "--no-scm"], work)
        _dvc(["remote", "add", "--default", "origin", remote], work)
        (work / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": version, "hash": "md5", "path": "data"}]}))
        _dvc(["pull", "--quiet", *(f"data/{r}" for r in relpaths)], work)
        entries = manifest(work / "data", version)
        out = []
        for rel in relpaths:
            wanted = {p: m for p, m in entries.items() if p == rel or p.startswith(rel.rstrip("/") + "/")}
            for p, md5 in wanted.items():
                got = file_md5(work / "data" / p)
                if got != md5:
                    raise VersioningError(f"{p}: restored md5 {got}, the version says {md5}")
            dest = into / rel
            if dest.exists():
                raise VersioningError(f"{dest} exists: restore into an empty folder")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work / "data" / rel), dest)
            for p in wanted:  # DVC may check out read-only links into its cache; the restored files are plain
                os.chmod(into / p, 0o644)
            out.append(Restored(rel, version, len(wanted)))
    return out


# ------------------------------------------------------------------------------------- what an MLflow run read

@dataclass
class RunDataset:
    name: str
    digest: str
    relpath: str
    version: str
    remote: str
    run_id: str


def run_datasets(client, run_id: str) -> list[RunDataset]:
    """The data-tree datasets an MLflow run read (its dataset inputs that carry `dvc.version`/`dvc.path`); for a
    run that read none itself (a pipeline or evaluation summary run), those of its child runs, de-duplicated."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise VersioningError(f"no MLflow run {run_id} in {client.tracking_uri}") from e
    found = []
    for di in run.inputs.dataset_inputs if run.inputs else []:
        tags = {t.key: t.value for t in di.tags}
        if "dvc.version" in tags and "dvc.path" in tags:
            found.append(RunDataset(di.dataset.name, di.dataset.digest, tags["dvc.path"], tags["dvc.version"],
                                    run.data.tags.get("dvc.remote", ""), run_id))
    if found:
        return found
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    unique: dict[tuple[str, str], RunDataset] = {}
    for child in children:
        for d in run_datasets(client, child.info.run_id):
            unique.setdefault((d.relpath, d.digest), d)
    return list(unique.values())


def restore_run(client, run_id: str, into: Path, remote: str | None = None) -> list[tuple[RunDataset, Restored]]:
    """Bring back, byte for byte, the datasets run `run_id` read, from the remote it pushed them to (or `remote`),
    into `into/<path in the data tree>`."""
    datasets = run_datasets(client, run_id)
    if not datasets:
        raise VersioningError(f"run {run_id} recorded no versioned data-tree inputs (nor did its child runs)")
    clash = {d.relpath for d in datasets if sum(e.relpath == d.relpath for e in datasets) > 1}
    if clash:
        raise VersioningError(f"run {run_id}'s child runs read different versions of {sorted(clash)}: restore "
                              "one child run at a time")
    out = []
    for d in datasets:
        where = remote or d.remote
        if not where:
            raise VersioningError(f"run {d.run_id} recorded no DVC remote: pass --remote")
        restored = restore(d.version, [d.relpath], where, into)[0]
        digest = dataset_digest({p: file_md5(into / p) for p in _files_under(into, d.relpath)}, d.relpath)
        if digest != d.digest:
            raise VersioningError(f"{d.relpath}: restored digest {digest}, run {d.run_id} recorded {d.digest}")
        out.append((d, restored))
    return out


def _files_under(root: Path, relpath: str) -> list[str]:
    target = Path(root) / relpath
    if target.is_file():
        return [relpath]
    return [p.relative_to(root).as_posix() for p in sorted(target.rglob("*")) if p.is_file()]

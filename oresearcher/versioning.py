"""DVC versioning of the data tree. DVC has no public Python API for add/push, so this calls its CLI.

`data/` is one DVC-tracked tree (`data.dvc`): each stage that writes under it calls `version_data`, which
records a new version (the `.dir` hash in `data.dvc`) and pushes it to the configured remote.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml


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


def checkpoint_sqlite(data_dir: Path) -> None:
    """Fold SQLite write-ahead logs into their databases: DVC versions the .sqlite files, not the -wal files."""
    for db in Path(data_dir).rglob("*.sqlite"):
        with sqlite3.connect(db, timeout=60) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def version_data(data_dir: Path, push: bool = True) -> str:
    """`dvc add` the data tree (and push it to the default remote); returns its DVC hash (the version id)."""
    data_dir = Path(data_dir).resolve()
    root = dvc_root(data_dir.parent)
    if root is None:
        raise VersioningError(f"{data_dir} is not inside a DVC repository (run `dvc init`)")
    checkpoint_sqlite(data_dir)
    rel = data_dir.relative_to(root)
    _dvc(["add", "--quiet", str(rel)], root)
    if push:
        _dvc(["push", "--quiet", str(rel) + ".dvc"], root)
    meta = yaml.safe_load((root / f"{rel}.dvc").read_text())
    return meta["outs"][0]["md5"]

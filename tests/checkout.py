"""A fresh checkout of the project in a temporary directory, as a user's clone would be: tracked and new
(not ignored) files only, committed into a new git repository, with nothing beside it.

    python3 tests/checkout.py /tmp/somewhere/clone     # what .ci/run does before `make lint` and `make test`
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fresh_checkout(dest: Path) -> Path:
    """Copy the working tree's files (what `git clone` of a commit of it would hold) to `dest`, commit them."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():  # a file deleted in the working tree is still listed as cached
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git = ["git", "-c", "user.email=test@localhost", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "fresh checkout"], cwd=dest, check=True)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    print(fresh_checkout(Path(sys.argv[1])))

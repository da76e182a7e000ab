"""The lock file `make` installs from (`requirements.lock`) pins every package the project asks for, at a version
its pyproject.toml accepts: a dependency changed without `make lock` fails here, not on a user's machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
            assert m, f"not an exact pin: {line!r}"
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_every_dependency_is_pinned_at_a_version_pyproject_accepts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = pins()
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    embedded = re.search(r"^EMBEDDED := (.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    wanted += [Requirement(r) for r in embedded]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"requirements.lock has {name}=={locked[name]}, pyproject.toml asks {req}: run `make lock`"


def test_make_installs_from_the_lock_file():
    makefile = (REPO / "Makefile").read_text()
    install = makefile.split("$(STAMP):", 1)[1].split("\ninstall:", 1)[0]
    assert "-r $(LOCK)" in install and "--no-deps" in install and '".[dev]"' not in install

"""The evaluation data the project carries: DeepResearch Bench and DeepResearchGym (see README.md beside this file).

    from oresearcher import evalsets
    evalsets.read_jsonl("drb/query.jsonl")          # the 100 DeepResearch Bench tasks
    evalsets.path("drg/clueweb_sample.jsonl")       # resolves to the .gz copy that ships here

These files travel with the repository (large ones gzipped), so a clone runs anywhere: ingestion checks new
seeds against them (contamination), the `drg` corpus serves the ClueWeb sample, evaluation reads the tasks
and criteria. `ORESEARCHER_EVAL_DATA` may point at another folder with the same layout (plain or .gz files).
They are evaluation data: never training seeds.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


class EvalDataError(FileNotFoundError):
    """An evaluation file that is missing (from the project, or from ORESEARCHER_EVAL_DATA) or unreadable."""


def root() -> Path:
    return Path(os.environ.get("ORESEARCHER_EVAL_DATA") or HERE).expanduser()


def path(name: str) -> Path:
    """The file for `name` (e.g. 'drb/query.jsonl'): the plain file if present, else its gzipped copy."""
    base = root() / name
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise EvalDataError(f"evaluation file {name} not found under {root()} "
                          f"(it ships with the repository; ORESEARCHER_EVAL_DATA overrides the folder)")


def read_text(name: str) -> str:
    p = path(name)
    raw = p.read_bytes()
    return (gzip.decompress(raw) if p.suffix == ".gz" else raw).decode("utf-8")


def read_jsonl(name: str) -> Iterator[dict]:
    for n, line in enumerate(read_text(name).splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path(name)}:{n}: not JSON ({e.msg})") from None

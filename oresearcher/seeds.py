"""Seed queries: read any supported file, validate, normalise, de-duplicate, flag evaluation look-alikes.

Formats: JSONL (field `query`, `prompt`, `question` or `text`), CSV (a column of those names, or the only
column), Parquet (same), plain text (one query per line). Per-record problems are rejections with a file,
line and reason (empty, too short, too long, undecodable, not JSON, no query field, exact or near duplicate,
contaminated); a file that cannot be read at all is an `IngestError` and nothing is written.

Near-duplicates are found by MinHash-LSH over character 5-grams, then confirmed by exact Jaccard, so the
check stays near-linear for thousands of seeds. Contamination uses the same index over the evaluation sets the
project carries (`oresearcher/evalsets`: DeepResearch Bench prompts, DeepResearchGym queries).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from oresearcher import evalsets
from oresearcher.config import IngestConfig

QUERY_FIELDS = ("query", "prompt", "question", "text")
TOPIC_FIELDS = ("topic", "category", "domain")  # optional; the review sample is stratified by it


class IngestError(ValueError):
    """A seed file that cannot be ingested at all; the message names the file and the problem."""


@dataclass
class Seed:
    id: str
    query: str
    source: str
    line: int
    topic: str = ""


@dataclass
class Rejection:
    source: str
    line: int
    reason: str
    detail: str = ""


@dataclass
class IngestResult:
    seeds: list[Seed] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    contamination: list[dict] = field(default_factory=list)  # seed, matched eval id, similarity
    read: int = 0

    def counts(self) -> dict[str, int]:
        by_reason = Counter(r.reason for r in self.rejections)
        return {"read": self.read, "accepted": len(self.seeds), "rejected": len(self.rejections),
                "contaminated": len(self.contamination), **{f"rejected/{k}": v for k, v in sorted(by_reason.items())}}


# ---------------------------------------------------------------------------------------------------- reading
def _decode_lines(raw: bytes, source: str, rejections: list[Rejection]) -> list[tuple[int, str]]:
    lines = []
    for n, chunk in enumerate(raw.split(b"\n"), 1):
        try:
            lines.append((n, chunk.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError as e:
            rejections.append(Rejection(source, n, "undecodable", f"not UTF-8 at byte {e.start}"))
    return lines


def _pick_field(keys, source: str) -> str:
    for name in QUERY_FIELDS:
        if name in keys:
            return name
    raise IngestError(f"{source}: no query column (expected one of {', '.join(QUERY_FIELDS)}; found {list(keys)})")


def _topic(record) -> str:
    value = next((record[k] for k in TOPIC_FIELDS if k in record and isinstance(record[k], str)), "")
    return normalize(value)[:100]


def read_records(path: Path, rejections: list[Rejection]) -> list[tuple[int, str, str]]:
    """(line, raw query text, topic) of every record in a seed file; the topic is "" where the file has none."""
    source = str(path)
    if not path.is_file():
        raise IngestError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise IngestError(f"{source}: not a readable Parquet file ({e})") from None
        column = table.column(_pick_field(table.column_names, source)).to_pylist()
        topics = next((table.column(k).to_pylist() for k in TOPIC_FIELDS if k in table.column_names), [])
        topics += [""] * (len(column) - len(topics))
        return [(i, v if isinstance(v, str) else "", t if isinstance(t, str) else "")
                for i, (v, t) in enumerate(zip(column, topics, strict=True), 1)]
    try:
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Excel's CSVs)
    except OSError as e:
        raise IngestError(f"{source}: cannot be read ({e.strerror})") from None
    if b"\x00" in raw[:65536]:  # text never holds NUL bytes; a gzip, an image, a .xlsx does
        raise IngestError(f"{source}: a binary file, not text (seed files are JSONL, CSV, Parquet or plain text)")
    before = len(rejections)
    lines = _decode_lines(raw, source, rejections)
    if len(rejections) - before > max(2, len(lines)):  # mostly undecodable: the wrong encoding, not a bad line
        raise IngestError(f"{source}: not UTF-8 text ({len(rejections) - before} undecodable lines; "
                          "re-save it as UTF-8)")
    if suffix == ".jsonl":
        out = []
        for n, line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rejections.append(Rejection(source, n, "not_json", e.msg))
                continue
            value = next((rec[k] for k in QUERY_FIELDS if isinstance(rec, dict) and k in rec), None)
            if not isinstance(value, str):
                rejections.append(Rejection(source, n, "no_query_field", f"expected one of {QUERY_FIELDS}"))
                continue
            out.append((n, value, _topic(rec)))
        return out
    if suffix == ".csv":
        text = "\n".join(line for _, line in lines)
        try:
            reader = csv.DictReader(io.StringIO(text), strict=True)
            fields = reader.fieldnames or []
            name = fields[0] if len(fields) == 1 else _pick_field(fields, source)
            return [(i + 1, row.get(name) or "", _topic({k: v for k, v in row.items() if k})) for i, row in
                    enumerate(reader, 1)]
        except csv.Error as e:
            raise IngestError(f"{source}: not valid CSV ({e})") from None
    return [(n, line, "") for n, line in lines if line.strip()]  # plain text: one query per line


# -------------------------------------------------------------------------------------------------- normalising
def normalize(text: str) -> str:
    """NFKC, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return " ".join(text.split())


def dedup_key(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def seed_id(query: str) -> str:
    return hashlib.sha256(dedup_key(query).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- near duplicates
def shingles(text: str, n: int = 5) -> set[str]:
    key = dedup_key(text)
    return {key[i : i + n] for i in range(max(1, len(key) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


class MinHashIndex:
    """MinHash-LSH (128 permutations, 32 bands of 4): candidates above ~0.5 Jaccard, confirmed exactly."""

    PERMS, BANDS = 128, 32
    _PRIME = (1 << 61) - 1

    def __init__(self, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, self._PRIME, self.PERMS, dtype=np.uint64)
        self.b = rng.integers(0, self._PRIME, self.PERMS, dtype=np.uint64)
        self.buckets: dict[tuple, list[int]] = defaultdict(list)
        self.items: list[tuple[str, set[str]]] = []

    def _signature(self, sh: set[str]) -> np.ndarray:
        x = np.array([zlib.crc32(s.encode()) for s in sh], dtype=np.uint64)
        # (a*x + b) mod p with uint64 wrap-around: a cheap universal-style hash family, good enough for LSH
        return ((np.outer(x, self.a) + self.b) % self._PRIME).min(axis=0)

    def _bands(self, sig: np.ndarray):
        rows = self.PERMS // self.BANDS
        return [(i, sig[i * rows : (i + 1) * rows].tobytes()) for i in range(self.BANDS)]

    def add(self, key: str, text: str) -> None:
        sh = shingles(text)
        idx = len(self.items)
        self.items.append((key, sh))
        for band in self._bands(self._signature(sh)):
            self.buckets[band].append(idx)

    def best_match(self, text: str, threshold: float) -> tuple[str, float] | None:
        sh = shingles(text)
        candidates = {i for band in self._bands(self._signature(sh)) for i in self.buckets.get(band, ())}
        best = max(((self.items[i][0], jaccard(sh, self.items[i][1])) for i in candidates), key=lambda t: t[1],
                   default=None)
        return best if best and best[1] >= threshold else None


def load_eval_queries(sets: list[str]) -> list[tuple[str, str]]:
    """(id, text) of the evaluation queries to keep out of training seeds."""
    out = []
    files = {"drb": ("drb/query.jsonl", "prompt"), "drg": ("drg/queries.jsonl", "query")}
    for name in sets:
        file, key = files[name]
        try:
            out += [(f"{name}:{rec['id']}", rec[key]) for rec in evalsets.read_jsonl(file)]
        except evalsets.EvalDataError as e:
            raise IngestError(str(e)) from None
    return out


def heldout_queries(cfg: IngestConfig) -> list[str]:
    """The held-out split (`ingest.heldout_seeds`, relative to the repository): no stage trains on these."""
    from oresearcher.config import REPO_ROOT

    path = cfg.heldout_seeds if cfg.heldout_seeds.is_absolute() else REPO_ROOT / cfg.heldout_seeds
    rejections: list[Rejection] = []
    queries = [normalize(q) for _, q, _ in read_records(path, rejections)]
    if rejections:
        raise IngestError(f"{path}:{rejections[0].line}: {rejections[0].reason} ({rejections[0].detail})")
    return [q for q in queries if q]


# ---------------------------------------------------------------------------------------------------- ingest
def ingest_files(paths: list[Path], cfg: IngestConfig) -> IngestResult:
    result = IngestResult()
    eval_index = MinHashIndex()
    for eval_id, text in load_eval_queries(cfg.eval_sets):
        eval_index.add(eval_id, text)
    for n, text in enumerate(heldout_queries(cfg), 1):  # kept out of training like evaluation queries
        eval_index.add(f"heldout:{n}", text)
    seen_exact: dict[str, str] = {}
    near_index = MinHashIndex()
    for path in paths:
        source = str(path)
        for line, raw, topic in read_records(Path(path), result.rejections):
            result.read += 1
            query = normalize(raw)
            reject = None
            if not query:
                reject = ("empty", "")
            elif len(query) < cfg.min_chars:
                reject = ("too_short", f"{len(query)} < {cfg.min_chars} characters")
            elif len(query) > cfg.max_chars:
                reject = ("too_long", f"{len(query)} > {cfg.max_chars} characters")
            elif (key := dedup_key(query)) in seen_exact:
                reject = ("duplicate", f"same as {seen_exact[key]}")
            elif match := near_index.best_match(query, cfg.near_duplicate_threshold):
                reject = ("near_duplicate", f"{match[1]:.2f} similar to {match[0]}")
            if reject:
                result.rejections.append(Rejection(source, line, *reject))
                continue
            seen_exact[key] = f"{source}:{line}"
            near_index.add(f"{source}:{line}", query)
            seed = Seed(seed_id(query), query, source, line, topic)
            if hit := eval_index.best_match(query, cfg.contamination_threshold):
                result.contamination.append({"seed": asdict(seed), "matches": hit[0], "similarity": round(hit[1], 3)})
                if cfg.drop_contaminated:
                    result.rejections.append(Rejection(source, line, "contaminated",
                                                       f"{hit[1]:.2f} similar to {hit[0]}"))
                    continue
            result.seeds.append(seed)
    return result


# ------------------------------------------------------------------------------------------------ seed versions
def seeds_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "seeds"


def write_seed_version(result: IngestResult, data_dir: Path, inputs: list[Path]) -> str:
    """Write the seed set and its report atomically; returns the version id (hash of the seed set)."""
    from oresearcher.store import atomic_write_text

    if not result.seeds:
        raise IngestError("no seed passed validation: nothing written (see the rejections)")
    body = "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in result.seeds)
    version = hashlib.sha256(body.encode()).hexdigest()[:16]
    report = {"version": version, "counts": result.counts(),
              "inputs": [{"path": str(p), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
                         for p in inputs],
              "rejections": [asdict(r) for r in result.rejections], "contamination": result.contamination}
    out = seeds_dir(data_dir)
    atomic_write_text(out / "seeds.jsonl", body)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    return version


def load_seeds(data_dir: Path) -> tuple[str, list[Seed]]:
    """(version, seeds) of the current seed set."""
    out = seeds_dir(data_dir)
    if not (out / "seeds.jsonl").exists():
        raise IngestError(f"no seed set in {out}: run `oresearcher ingest FILE...` first")
    body = (out / "seeds.jsonl").read_bytes()
    # The version is the hash of the seed file itself, so it can never disagree with the seeds it names.
    version = hashlib.sha256(body).hexdigest()[:16]
    seeds = [Seed(**json.loads(line)) for line in body.decode("utf-8").splitlines() if line.strip()]
    return version, seeds


def format_report(result: IngestResult, max_lines: int = 50) -> str:
    """Human-readable: counts, then each rejection as `file:line: reason (detail)`."""
    lines = [", ".join(f"{k} {v}" for k, v in result.counts().items())]
    for r in result.rejections[:max_lines]:
        lines.append(f"  {r.source}:{r.line}: {r.reason}" + (f" ({r.detail})" if r.detail else ""))
    if len(result.rejections) > max_lines:
        lines.append(f"  ... and {len(result.rejections) - max_lines} more (see data/seeds/report.json)")
    return "\n".join(lines)

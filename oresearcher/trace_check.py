"""`oresearcher trace check`: validate every trace in a file, ours or a third party's.

Input: JSONL (one record per line; the trace is in `--field`, a dotted path, or found automatically), a chat
record with a `messages` list (the turns after the user's query are joined back into one trace), or a plain
text file holding one trace. Output: each trace's violations, then a summary; invalid traces fail the check.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from oresearcher import grammar

AUTO_FIELDS = ("trace", "text", "output", "response", "completion", "messages", "conversations")


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    n_valid: int = 0
    n_invalid: int = 0
    rules: Counter = field(default_factory=Counter)

    @property
    def all_valid(self) -> bool:
        return self.n_invalid == 0 and self.n_valid > 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _dig(record, path: str):
    node = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(path)
    return node


def trace_from_messages(messages: list) -> str:
    """Join a chat transcript back into one trace: every turn after the first user turn, in order.

    Tool turns not already wrapped in <observation> are wrapped, escaped like any observation.
    """
    turns = [m for m in messages if isinstance(m, dict)]
    first_user = next((i for i, m in enumerate(turns) if m.get("role", m.get("from")) in ("user", "human")), -1)
    parts = []
    for m in turns[first_user + 1 :]:
        text = str(m.get("content", m.get("value", "")) or "")
        if m.get("role", m.get("from")) in ("tool", "user", "human", "observation") and \
                not text.lstrip().lower().startswith("<observation>"):
            text = grammar.observation_text(text)
        parts.append(text)
    return "\n".join(parts)


def extract_trace(record, field_name: str | None) -> str:
    if isinstance(record, str):
        return record
    names = [field_name] if field_name else [f for f in AUTO_FIELDS if isinstance(record, dict) and f in record]
    if not names:
        raise KeyError(f"no trace field (tried {', '.join(AUTO_FIELDS)}; use --field)")
    value = _dig(record, names[0])
    if isinstance(value, list):
        return trace_from_messages(value)
    if not isinstance(value, str):
        raise KeyError(f"field {names[0]!r} is a {type(value).__name__}, not text")
    return value


def _records(path: Path):
    """(label, record or error) for each trace in the file."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix not in (".jsonl", ".json") and not raw.lstrip().startswith("{"):
        yield "1", raw
        return
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield str(n), json.loads(line)
        except json.JSONDecodeError as e:
            yield str(n), ValueError(f"not JSON: {e.msg}")


def check_file(path: Path, field: str | None = None, max_shown: int = 10) -> CheckReport:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    report = CheckReport()
    for label, record in _records(path):
        rid = record.get("id", "") if isinstance(record, dict) else ""
        name = f"line {label}" + (f" (id {rid})" if rid != "" else "")
        if isinstance(record, Exception):
            report.n_invalid += 1
            report.rules["unreadable"] += 1
            report.lines.append(f"{name}: UNREADABLE: {record}")
            continue
        try:
            text = extract_trace(record, field)
        except KeyError as e:
            report.n_invalid += 1
            report.rules["unreadable"] += 1
            report.lines.append(f"{name}: UNREADABLE: {e.args[0]}")
            continue
        violations = grammar.validate(text)
        if not violations:
            report.n_valid += 1
            report.lines.append(f"{name}: valid")
            continue
        report.n_invalid += 1
        report.rules.update(v.rule.value for v in violations)
        report.lines.append(f"{name}: INVALID ({len(violations)} violations)")
        report.lines += [f"    {v}" for v in violations[:max_shown]]
        if len(violations) > max_shown:
            report.lines.append(f"    ... and {len(violations) - max_shown} more")
    total = report.n_valid + report.n_invalid
    report.lines.append(f"checked {total} traces: {report.n_valid} valid, {report.n_invalid} invalid")
    if report.rules:
        report.lines.append("violations by rule: " + ", ".join(f"{r} {c}" for r, c in report.rules.most_common()))
    return report

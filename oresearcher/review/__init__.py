"""Tier 3 of filtering: the human spot-check queue (`queue`) and the page reviewers use (`server`)."""

from __future__ import annotations

from oresearcher import grammar as g


def review_payload(record: dict, score: int | None = None, reason: str = "", topic: str = "") -> dict:
    """What the review page shows of one trace record: its parts, already split by the grammar module, as plain
    strings (the page renders them as text, never as markup)."""
    parsed = g.parse(record.get("trace") or "")
    subtasks = [{"title": st.title, "answer": st.answer or "", "steps": [_step(seg) for seg in st.steps]}
                for st in parsed.subtasks]
    body, _ = g.split_report(parsed.report or "")
    return {"query": record["query"], "topic": topic, "score": score, "reason": reason,
            "subtask_list": parsed.subtask_list, "subtasks": subtasks, "report": body.strip(),
            "references": [{"n": r.number, "url": r.url, "title": r.title} for r in g.references(parsed.report or "")]}


def _step(seg: g.Segment) -> dict:
    if seg.tag not in g.TOOL_TAGS:
        return {"kind": seg.tag, "text": seg.content}
    call = g.parse_tool_call(seg.tag, seg.content)
    if call.error:
        return {"kind": seg.tag, "text": f"{seg.content}  (unusable: {call.error})"}
    return {"kind": seg.tag, "text": "\n".join(call.args) + (f"\n(results: {call.num})" if call.num else "")}

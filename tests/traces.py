"""Trace text builders for tests, written with the grammar module's own helpers."""

from __future__ import annotations

from oresearcher import grammar as g

URL = "https://en.wikipedia.org/wiki/Black_Death"


def valid_trace(report: str | None = None) -> str:
    report = report or (
        "## Introduction\nThe Black Death killed up to half of Europe [1].\n\n## Body\nIt was caused by "
        "Yersinia pestis [1]. Wages rose afterwards [2].\n\n## Conclusion\nA turning point [1][2].\n\n"
        f"## References\n[1]. {URL} - Black Death\n[2]. https://en.wikipedia.org/wiki/Peasants%27_Revolt - "
        "Peasants' Revolt")
    return "\n".join([
        g.block(g.SUBTASK_LIST, "1. Causes of the Black Death\n2. Economic effects"),
        g.block(g.SUBTASK, "Causes of the Black Death"),
        g.block(g.THINK, "I need the cause of the pandemic."),
        g.block(g.PLAN, "Search, then read the main article."),
        g.tool_call_text(g.WEB_SEARCH, ["causes of the Black Death", "Yersinia pestis"], 5),
        g.observation_text(f"1. [Black Death]({URL})\n   The Black Death was a plague pandemic."),
        g.block(g.THINK, "Read the article."),
        g.tool_call_text(g.CRAWL_PAGE, [URL]),
        g.observation_text("## [Black Death](" + URL + ")\n\nCaused by the bacterium Yersinia pestis."),
        g.block(g.SUBTASK_ANSWER, f"Yersinia pestis, spread by fleas [{URL}]."),
        g.block(g.SUBTASK, "Economic effects"),
        g.block(g.THINK, "Wages after the plague."),
        g.block(g.PLAN, "Search wages."),
        g.tool_call_text(g.WEB_SEARCH, ["Black Death wages"]),
        g.observation_text("1. [Peasants' Revolt](https://en.wikipedia.org/wiki/Peasants%27_Revolt)"),
        g.block(g.SUBTASK_ANSWER, "Labour shortages raised wages."),
        g.block(g.SUGGESTED_ANSWER, report),
    ])


BLACK_DEATH = "https://en.wikipedia.org/wiki/Black_Death"
REVOLT = "https://en.wikipedia.org/wiki/Peasants%27_Revolt"
OBSERVED = f"1. [Black Death]({BLACK_DEATH})\n   A plague pandemic.\n2. [Peasants' Revolt]({REVOLT})\n   An uprising."
REPORT = ("## Introduction\nThe Black Death killed up to half of Europe [1].\n\n## Effects\nWages rose and peasants "
          "revolted in 1381 [2].\n\n## Conclusion\nA turning point for labour [1][2].\n\n"
          f"## References\n[1]. {BLACK_DEATH} - Black Death\n[2]. {REVOLT} - Peasants' Revolt")
UNCITED = REPORT.replace(" [1][2].", ".").replace(" [1].", ".").replace(" [2].", ".")


def search(*queries: str) -> tuple[str, list[str]]:
    return g.WEB_SEARCH, list(queries)


def crawl(*urls: str) -> tuple[str, list[str]]:
    return g.CRAWL_PAGE, list(urls)


def research_trace(*subtasks: list[tuple[str, list[str]]], report: str = REPORT, observation: str = OBSERVED) -> str:
    """A well-formed trace: one subtask per argument, each making the given tool calls in order."""
    titles = [f"Aspect {i}" for i in range(1, len(subtasks) + 1)]
    parts = [g.block(g.SUBTASK_LIST, "\n".join(f"{i}. {t}" for i, t in enumerate(titles, 1)))]
    for title, calls in zip(titles, subtasks, strict=True):
        parts += [g.block(g.SUBTASK, title), g.block(g.THINK, "I should look this up.")]
        for n, (name, args) in enumerate(calls):
            if n:
                parts.append(g.block(g.THINK, "Next."))
            parts += [g.tool_call_text(name, args, 5 if name == g.WEB_SEARCH else None), g.observation_text(observation)]
        parts.append(g.block(g.SUBTASK_ANSWER, f"Found it [{BLACK_DEATH}]."))
    parts.append(g.block(g.SUGGESTED_ANSWER, report))
    return "\n".join(parts)


def write_filtered_version(data, status: str, n: int = 3, version: str = "v1") -> list[dict]:
    """A filtered dataset version of `n` valid traces whose review gate says `status`, as the filter flow leaves it."""
    from oresearcher import filtering as f

    records = [{"id": f"t{i}", "seed_id": f"s{i}", "candidate": 0, "query": f"q{i}", "trace": valid_trace()}
               for i in range(n)]
    f.write_version(data, version, records, [f.Verdict(r["id"], r["seed_id"], 0, r["query"]) for r in records])
    f.write_gate(data, version, {"status": status, "reason": "test"})
    return records

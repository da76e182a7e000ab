"""The evaluation's HTML report: one self-contained page (inline SVG, no scripts, nothing fetched), so it opens
from MLflow's artifact view, a Prefect artifact link or a plain file in any browser.

    html = render(set_name, {"base": summary, "sft": summary}, decision, identity)

Plots: per-dimension RACE bars, one series per model, each with its bootstrap interval; then the other headline
scores (FACT, key points, format validity) with intervals where they have one.
"""

from __future__ import annotations

import html as _html

from oresearcher.evaluation import DIMENSIONS

COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"]
TABLE_METRICS = [("race", "RACE", 1), ("fact_accuracy", "citation accuracy", 100),
                 ("fact_effective_citations", "effective citations", 1), ("kpr", "KPR", 1), ("kpc", "KPC", 1),
                 ("valid", "format valid %", 100), ("tool_calls", "tool calls", 1), ("cost_usd", "cost $", 1)]


def bar_chart(title: str, groups: list[str], series: dict[str, list[tuple[float, float, float] | None]],
              y_max: float = 100.0, ref_line: float | None = 50.0) -> str:
    """Grouped bars with interval whiskers: `series[model][i]` = (value, lo, hi) for `groups[i]`, or None."""
    # groups of bars, then a column for the legend; wide enough for the title however few the groups
    w, h, left, bottom, top = max(120 * max(len(groups), 1) + 80 + 160, 560), 300, 50, 40, 30
    plot_h = h - bottom - top
    n = max(len(series), 1)
    bar_w = min(28, 90 / n)
    y = lambda v: top + plot_h * (1 - max(0.0, min(v, y_max)) / y_max)  # noqa: E731
    parts = [f'<svg class="chart" role="img" aria-label="{_e(title)}" width="{w}" height="{h}" '
             f'xmlns="http://www.w3.org/2000/svg">', f'<text x="{left}" y="18" font-weight="bold">{_e(title)}</text>']
    for tick in range(0, 5):
        v = y_max * tick / 4
        parts.append(f'<line x1="{left}" x2="{w - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:g}</text>')
    if ref_line is not None:
        parts.append(f'<line x1="{left}" x2="{w - 10}" y1="{y(ref_line):.1f}" y2="{y(ref_line):.1f}" '
                     f'stroke="#999" stroke-dasharray="4 3"/>')
    for gi, group in enumerate(groups):
        x0 = left + 20 + gi * 120
        for si, (model, values) in enumerate(series.items()):
            point = values[gi] if gi < len(values) else None
            if point is None:
                continue
            v, lo, hi = point
            x = x0 + si * bar_w
            parts.append(f'<rect class="bar" data-model="{_e(model)}" x="{x:.1f}" y="{y(v):.1f}" '
                         f'width="{bar_w - 2:.1f}" height="{top + plot_h - y(v):.1f}" '
                         f'fill="{COLORS[si % len(COLORS)]}"><title>{_e(model)} {_e(group)}: {v:.1f} '
                         f'[{lo:.1f}, {hi:.1f}]</title></rect>')
            cx = x + (bar_w - 2) / 2
            parts.append(f'<line class="interval" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(hi):.1f}" y2="{y(lo):.1f}" '
                         f'stroke="#222"/><line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" y1="{y(hi):.1f}" '
                         f'y2="{y(hi):.1f}" stroke="#222"/><line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" '
                         f'y1="{y(lo):.1f}" y2="{y(lo):.1f}" stroke="#222"/>')
        parts.append(f'<text x="{x0 + n * bar_w / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle" '
                     f'font-size="12">{_e(group.replace("_", " "))}</text>')
    for si, model in enumerate(series):
        parts.append(f'<rect x="{w - 150}" y="{top + si * 16}" width="10" height="10" '
                     f'fill="{COLORS[si % len(COLORS)]}"/><text x="{w - 135}" y="{top + si * 16 + 9}" '
                     f'font-size="11">{_e(model)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(set_name: str, summaries: dict[str, dict[str, float]], decision: dict | None, judge: dict,
           tasks: int) -> str:
    """The page: the comparison table with intervals, the per-dimension RACE chart, the other headline scores, the
    promotion decision and the judge that produced every number."""

    def point(m: dict, key: str, scale: float = 1.0):
        if key not in m:
            return None
        return (m[key] * scale, m.get(f"{key}_ci_lo", m[key]) * scale, m.get(f"{key}_ci_hi", m[key]) * scale)

    race_chart = bar_chart("RACE by dimension (50 = parity with the reference)", ["overall", *DIMENSIONS],
                           {label: [point(m, "race"), *(point(m, f"race_{d}") for d in DIMENSIONS)]
                            for label, m in summaries.items()})
    other = [("fact_accuracy", "citation accuracy", 100), ("kpr", "key-point recall", 1),
             ("valid", "format valid", 100)]
    other = [o for o in other if any(o[0] in m for m in summaries.values())]
    other_chart = bar_chart("Citations, key points and format (%)", [o[1] for o in other],
                            {label: [point(m, k, s) for k, _, s in other] for label, m in summaries.items()},
                            ref_line=None) if other else ""
    head = "".join(f"<th>{_e(t)}</th>" for _, t, _ in TABLE_METRICS)
    rows = []
    for label, m in summaries.items():
        cells = []
        for key, _, scale in TABLE_METRICS:
            if key not in m:
                cells.append("<td>–</td>")
                continue
            ci = (f" <small>[{m[key + '_ci_lo'] * scale:.1f}, {m[key + '_ci_hi'] * scale:.1f}]</small>"
                  if f"{key}_ci_lo" in m else "")
            cells.append(f"<td>{m[key] * scale:.2f}{ci}</td>")
        rows.append(f"<tr><th>{_e(label)}</th>{''.join(cells)}</tr>")
    verdict = ""
    if decision:
        verdict = f'<p class="decision"><b>Promotion:</b> {_e(decision.get("summary", ""))}</p>'
    judge_line = ", ".join(f"{k}={v}" for k, v in judge.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation: {_e(set_name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child{{text-align:left}}
.chart{{display:block;margin:16px 0}}small{{color:#666}}</style></head>
<body><h1>Evaluation on {_e(set_name)}</h1>
<p>{tasks} tasks; intervals are {_e(str(judge.get("confidence", "")))} bootstrap intervals over tasks.</p>
<table id="scores"><tr><th>model</th>{head}</tr>{''.join(rows)}</table>
{race_chart}
{other_chart}
{verdict}
<p><small>judge: {_e(judge_line)}</small></p>
</body></html>
"""


def _e(text: str) -> str:
    return _html.escape(str(text), quote=True)

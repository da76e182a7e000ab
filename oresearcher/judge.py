"""The LLM judge: a rubric score for a report, through the one LLM client (cached, costed, budgeted).

Tier 2 of filtering calls it on every trace that passed the rules; the GRPO reward's R_base and the evaluation's
scores will call the same `Judge`. Its verdict is written in the guided score form (`grammar.score_guide`):
"Reason: ...\\nScore: n", so even the embedded 135M model returns a score `grammar.parse_score` reads. A judge
served without a grammar may write something else: that is an unparseable score, counted, never guessed.

    judge = Judge(client, cfg.filter.judge)
    score = await judge.score(query, report)      # Score(value=7, reason="...", criteria=[...])
    judge.identity                                # model, prompt hash, temperature, seed: recorded with scores
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from models.llm import LLMClient, LLMError, Usage
from oresearcher import grammar as g
from oresearcher.agents import PROMPTS, prompt
from oresearcher.config import JudgeConfig


@dataclass
class Score:
    value: int | None  # None: the judge wrote no readable score, or failed
    reason: str = ""
    criteria: list[str] = field(default_factory=list)
    error: str | None = None  # the call failed (after the client's retries): not a verdict on the trace

    @property
    def parsed(self) -> bool:
        return self.value is not None


def make_judge(cfg, run: str = "") -> Judge:
    """The configured judge (`filter.judge`) on the shared response cache (`data/llm.sqlite`) and its cost cap:
    the filter's tier 2 and the GRPO reward use this one."""
    from models.llm import Budget, LLMStore, make_client

    jc = cfg.filter.judge
    client = make_client(jc.model, key="filter.judge.model", store=LLMStore(cfg.paths.data / "llm.sqlite"),
                         budget=Budget(jc.max_cost_usd), run=run, cache_dir=cfg.paths.cache)
    return Judge(client, jc)


class Judge:
    def __init__(self, client: LLMClient, cfg: JudgeConfig):
        self.client, self.cfg = client, cfg
        self.usage = Usage()
        self._criteria: dict[str, asyncio.Future] = {}  # query -> its generated criteria, asked once

    @property
    def identity(self) -> dict:
        """What a score depends on besides its inputs (method.md §5: judge discipline)."""
        sha = hashlib.sha256()
        for name in ("judge.md", "judge_criteria.md"):
            sha.update((PROMPTS / name).read_bytes())
        return {"model": self.client.model_id, "prompt_sha": sha.hexdigest()[:12], "criteria": self.cfg.criteria,
                "temperature": self.cfg.model.temperature, "seed": self.cfg.seed, "scale": self.cfg.scale,
                "guided": self.client.guided}

    async def criteria(self, query: str) -> list[str]:
        """The rubric for `query`: the static one, or n criteria the judge writes for it (one call per query)."""
        if self.cfg.criteria == "static":
            return list(self.cfg.rubric)
        known = self._criteria.get(query)
        if known is None or known.cancelled():  # (a loop that ended mid-call cancels it: ask again)
            self._criteria[query] = asyncio.ensure_future(self._generate_criteria(query))
        return await self._criteria[query]

    async def _generate_criteria(self, query: str) -> list[str]:
        n = self.cfg.n_criteria
        resp = await self.client.chat([{"role": "user", "content": prompt("judge_criteria", n=n, query=query)}],
                                      guide=g.planner_guide(n, n, self.cfg.guide), seed=self.cfg.seed,
                                      tag="judge_criteria", usage=self.usage)
        items = g.split_list_items(resp.text)
        return items[:n] if items else list(self.cfg.rubric)  # an unguided judge's ramble: fall back to the rubric

    async def score(self, query: str, report: str) -> Score:
        """A score from 0 to `scale` for `report` as an answer to `query`."""
        try:
            criteria = await self.criteria(query)
            text = report if len(report) <= self.cfg.max_report_chars else \
                report[: self.cfg.max_report_chars] + "\n[... cut]"
            content = prompt("judge", query=query, criteria="\n".join(f"- {c}" for c in criteria), report=text,
                             scale=self.cfg.scale)
            resp = await self.client.chat([{"role": "user", "content": content}],
                                          guide=g.score_guide(0, self.cfg.scale, self.cfg.guide), seed=self.cfg.seed,
                                          tag="judge", usage=self.usage)
        except LLMError as e:
            return Score(None, error=e.reason)
        value = g.parse_score(resp.text)
        reason = next((line.removeprefix("Reason:").strip() for line in resp.text.splitlines()
                       if line.startswith("Reason:")), resp.text.strip()[:300])
        if value is not None and not 0 <= value <= self.cfg.scale:
            value = None
        return Score(value, reason, criteria)

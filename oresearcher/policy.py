"""The trained policy's runtime: one model writes the whole trace in one stream, and the environment answers its
tool calls (method.md §2). GRPO's rollouts and the evaluation of a policy both run through here.

    result = await rollout(client, env, query, cfg.rollout, seed=7)
    result.trace, result.tool_calls, result.stop_reason

Generation stops at `</web_search>`, `</crawl_page>` and `</suggested_answer>`. After a tool call the environment's
`<observation>` is appended and the model continues the same assistant turn (a prefill), as the released inference
loop does; after the report, or the turn cap, or a generation that neither calls a tool nor ends, the rollout ends.
The prompt is `sft.policy_messages`, the same one SFT trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.llm import LLMClient, LLMError, Usage
from oresearcher import grammar as g
from oresearcher.agents import observe
from oresearcher.config import RolloutConfig
from oresearcher.research.environment import ResearchEnvironment
from oresearcher.sft import policy_messages


@dataclass
class Rollout:
    query: str
    trace: str = ""
    tool_calls: int = 0
    turns: int = 0
    stop_reason: str = ""  # "answered", "turn_cap", "tool_cap", "length", "no_action", "error"
    error: str = ""  # why the model could not go on ("error"): the context is full, the server refused
    usage: Usage = field(default_factory=Usage)
    # the trace in pieces, each (text, written by the model?): GRPO trains on the model's pieces only
    segments: list[tuple[str, bool]] = field(default_factory=list)

    def extend(self, text: str, by_model: bool) -> None:
        self.trace += text
        self.segments.append((text, by_model))


async def rollout(client: LLMClient, env: ResearchEnvironment, query: str, cfg: RolloutConfig,
                  seed: int | None = None) -> Rollout:
    """One trace for `query`, unguided: what the policy itself writes."""
    out = Rollout(query)
    messages = policy_messages(query)
    while out.turns < cfg.max_turns:
        out.turns += 1
        try:
            resp = await client.chat([*messages, {"role": "assistant", "content": out.trace}] if out.trace else messages,
                                     max_tokens=cfg.max_new_tokens, stop=g.STOP_SEQUENCES, tag="policy",
                                     usage=out.usage, seed=None if seed is None else seed * 100 + out.turns)
        except LLMError as e:  # e.g. the trace outgrew the context: this rollout ends, the batch goes on
            if e.transient:
                raise
            out.stop_reason, out.error = "error", e.reason
            break
        choice = resp.choices[0]
        text = g.complete_stop(choice.text, choice.stop_sequence)
        out.extend(text, by_model=True)
        if out.trace.rstrip().endswith(f"</{g.SUGGESTED_ANSWER}>"):
            out.stop_reason = "answered"
            break
        call = g.last_tool_call(text) if text.rstrip().endswith(("</web_search>", "</crawl_page>")) else None
        if call is None:
            out.stop_reason = "length" if choice.finish_reason == "length" else "no_action"
            break
        if out.tool_calls >= cfg.max_tool_calls:
            out.stop_reason = "tool_cap"
            break
        observation = await observe(env, call)
        out.tool_calls += 1
        out.extend("\n" + g.observation_text(observation) + "\n", by_model=False)
    else:
        out.stop_reason = "turn_cap"
    return out

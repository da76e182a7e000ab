"""The policy's one-stream runtime over the real research environment, against a stand-in policy endpoint (an
OpenAI-compatible server: how a remote policy is evaluated), and its caps."""

from __future__ import annotations

import asyncio

from teacher_api import TeacherAPI

from models.llm import make_client
from oresearcher import grammar as g
from oresearcher.config import ModelConfig, RolloutConfig
from oresearcher.policy import rollout
from oresearcher.research.environment import ResearchEnvironment


def run(settings_factory, tool_steps: int, cfg: RolloutConfig):
    settings = settings_factory("research.tape.mode=live")
    env = ResearchEnvironment.from_config(settings)
    with TeacherAPI(latency_s=0.0, tool_steps=tool_steps) as api:
        client = make_client(ModelConfig(name="policy", backend="openai", base_url=api.base_url))

        async def go():
            try:
                return await rollout(client, env, "What caused the Black Death?", cfg, seed=1)
            finally:
                await client.aclose()

        return asyncio.run(go()), api.stats()


def test_a_rollout_calls_tools_through_the_environment_and_ends_with_the_report(settings_factory):
    out, stats = run(settings_factory, tool_steps=2, cfg=RolloutConfig())
    assert out.stop_reason == "answered" and out.tool_calls == 2 and out.turns == 3
    assert g.validate(out.trace) == []  # the observations are the environment's, the citations real
    parsed = g.parse(out.trace)
    assert len(parsed.observations) == 2 and all("](https://en.wikipedia.org/" in o for o in parsed.observations)
    assert stats["completions"] == 3  # one generation per turn, each continuing the same assistant turn


def test_caps_end_a_rollout(settings_factory):
    out, _ = run(settings_factory, tool_steps=5, cfg=RolloutConfig(max_tool_calls=2))
    assert out.stop_reason == "tool_cap" and out.tool_calls == 2
    out, _ = run(settings_factory, tool_steps=5, cfg=RolloutConfig(max_turns=2))
    assert out.stop_reason == "turn_cap" and out.turns == 2
